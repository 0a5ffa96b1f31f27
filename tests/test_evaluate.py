"""evaluate.py: a checkpoint and its ONNX export score the same; JSON and PNG are written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ferplus.checkpoint import save_checkpoint
from ferplus.labels import EMOTIONS, NUM_EMOTIONS, NUM_VOTES, process_votes
from ferplus.models import create_model
from ferplus.onnx_export import export_onnx
from scripts import run_script

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_SIDE = 48
NUM_IMAGES = 60
DROPPED_EVERY = 6  # every 6th image gets split votes, which the majority rule drops


def write_prepared_split(folder: Path, seed: int) -> int:
    """A prepared split folder (PNGs + label.csv) of random textured faces; returns the kept count."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines, votes_all = [], []
    for i in range(NUM_IMAGES):
        # Smooth random blobs, so preprocessing (histogram equalisation) sees varied images.
        small = rng.integers(0, 256, (6, 6), dtype=np.uint8)
        image = cv2.resize(small, (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_CUBIC)
        name = f"img{i:03d}.png"
        cv2.imwrite(str(folder / name), image)
        votes = [0] * NUM_VOTES
        if i % DROPPED_EVERY == 0:
            votes[0], votes[1], votes[2] = 4, 4, 2
        else:
            votes[i % NUM_EMOTIONS] = 8
            votes[(i + 1) % NUM_EMOTIONS] = 2
        votes_all.append(votes)
        lines.append(f'{name},"(0, 0, {IMAGE_SIDE}, {IMAGE_SIDE})",' + ",".join(map(str, votes)))
    (folder / "label.csv").write_text("\n".join(lines) + "\n")
    _, keep = process_votes(np.array(votes_all), "majority")
    return int(keep.sum())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, int]:
    base = tmp_path_factory.mktemp("prepared")
    kept = write_prepared_split(base / "FER2013Test", seed=1)
    write_prepared_split(base / "FER2013Valid", seed=2)
    return base, kept


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder with an untrained vgg13_tiny checkpoint and its ONNX export."""
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    model = create_model("vgg13_tiny").eval()
    state = {"model": "vgg13_tiny", "mode": "majority", "model_state": model.state_dict(), "epoch": 0}
    save_checkpoint(folder / "best.pt", state)
    export_onnx(model, folder / "model.onnx", metadata={"model": "vgg13_tiny", "mode": "majority", "epoch": 0})
    return folder


def evaluate(argv: list[str]) -> int:
    return run_script("evaluate", *argv)


def test_checkpoint_and_onnx_agree(data, run_folder, tmp_path, capsys):
    base, kept = data
    assert evaluate([str(run_folder / "best.pt"), "-d", str(base), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    onnx_out = tmp_path / "onnx"
    assert evaluate([str(run_folder / "model.onnx"), "-d", str(base), "--output", str(onnx_out), "-b", "7"]) == 0

    # Default output: the checkpoint's folder.
    from_checkpoint = json.loads((run_folder / f"eval_best_{base.name}_test.json").read_text())
    from_onnx = json.loads((onnx_out / f"eval_model_onnx_{base.name}_test.json").read_text())
    assert from_checkpoint["format"] == "checkpoint" and from_onnx["format"] == "onnx"
    assert from_checkpoint["model"] == from_onnx["model"] == "vgg13_tiny"
    assert from_checkpoint["confusion_matrix"] == from_onnx["confusion_matrix"]
    assert from_checkpoint["accuracy"] == from_onnx["accuracy"]
    for result in (from_checkpoint, from_onnx):
        confusion = np.array(result["confusion_matrix"])
        assert confusion.shape == (NUM_EMOTIONS, NUM_EMOTIONS)
        assert result["num_images"] == confusion.sum() == kept < NUM_IMAGES
        assert result["accuracy"] == pytest.approx(np.trace(confusion) / kept)
        assert set(result["per_class_accuracy"]) == set(EMOTIONS)
    for png in (run_folder / f"eval_best_{base.name}_test.png", onnx_out / f"eval_model_onnx_{base.name}_test.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert f"accuracy: {100 * from_checkpoint['accuracy']:.2f}%" in printed
    assert "true \\ pred" in printed  # the confusion table


@pytest.mark.parametrize("spelling", ["val", "valid"])
def test_split_choice(data, run_folder, tmp_path, spelling):
    base, _ = data
    assert evaluate([str(run_folder / "best.pt"), "-d", str(base), "--split", spelling, "--output", str(tmp_path)]) == 0
    assert json.loads((tmp_path / f"eval_best_{base.name}_val.json").read_text())["split"] == "val"
    assert (tmp_path / f"eval_best_{base.name}_val.png").is_file()


def test_other_data_folders_and_labels_never_overwrite(data, run_folder, tmp_path):
    base, _ = data
    other = tmp_path / "other_data"
    shutil.copytree(base / "FER2013Test", other / "FER2013Test")
    out = tmp_path / "out"
    for argv in ([], ["--label", "second"]):
        assert evaluate([str(run_folder / "best.pt"), "-d", str(base), "--output", str(out), *argv]) == 0
    assert evaluate([str(run_folder / "best.pt"), "-d", str(other), "--output", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*.json"))
    assert written == sorted(f"eval_best_{label}_test.json" for label in (base.name, "second", "other_data"))
    assert json.loads((out / "eval_best_other_data_test.json").read_text())["data_folder"] == str(other / "FER2013Test")


@pytest.mark.parametrize("label", ["a/b", "..", ""])
def test_a_label_is_a_plain_name(data, run_folder, tmp_path, label, capsys):
    base, _ = data
    argv = [str(run_folder / "best.pt"), "-d", str(base), "--output", str(tmp_path), "--label", label]
    assert evaluate(argv) == 2
    assert "give a plain name" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_missing_split_is_a_clear_error(data, run_folder, tmp_path, capsys):
    base, _ = data
    status = evaluate([str(run_folder / "best.pt"), "-d", str(base), "--split", "train", "--output", str(tmp_path)])
    assert status == 2
    assert "FER2013Train: no such folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unreadable_onnx_is_a_clear_error(data, tmp_path, capsys):
    base, _ = data
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    assert evaluate([str(bogus), "-d", str(base)]) == 2
    assert "model.onnx: not a readable ONNX model" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
