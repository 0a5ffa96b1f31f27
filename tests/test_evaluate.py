"""evaluate.py: a checkpoint and its ONNX export give the model's own confusion matrix; JSON and PNG are
written; foreign ONNX files and a full disk are one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch

from ferplus.labels import EMOTIONS, NUM_EMOTIONS, NUM_VOTES
from ferplus.models import create_model
from ferplus.transforms import preprocess
from scripts import fill_disk_for, run_script, write_model_files, write_split

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_SIDE = 48
NUM_IMAGES = 60
DROPPED_EVERY = 6  # every 6th image gets split votes, which the majority rule drops


def split_images(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """NUM_IMAGES random textured faces uint8 (N, 48, 48), their votes (N, 10) and the true class
    of each (-1 where split votes make the majority rule drop the image), known by construction."""
    rng = np.random.default_rng(seed)
    # Smooth random blobs, so preprocessing (histogram equalisation) sees varied images.
    images = np.stack([
        cv2.resize(rng.integers(0, 256, (6, 6), dtype=np.uint8), (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_CUBIC)
        for _ in range(NUM_IMAGES)
    ])
    votes = np.zeros((NUM_IMAGES, NUM_VOTES), dtype=np.int64)
    labels = np.full(NUM_IMAGES, -1)
    for i in range(NUM_IMAGES):
        if i % DROPPED_EVERY == 0:
            votes[i, :3] = 4, 4, 2
        else:
            votes[i, i % NUM_EMOTIONS], votes[i, (i + 1) % NUM_EMOTIONS] = 8, 2
            labels[i] = i % NUM_EMOTIONS
    return images, votes, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A data folder with a test and a validation split; returns it with the test split's images and true classes."""
    base = tmp_path_factory.mktemp("prepared")
    images, votes, labels = split_images(seed=1)
    write_split(base / "FER2013Test", images, votes)
    write_split(base / "FER2013Valid", *split_images(seed=2)[:2])
    return base, images, labels


def varied_model(inputs: torch.Tensor) -> torch.nn.Module:
    """An untrained vgg13_tiny whose last layer is set by hand to spread its predictions on ``inputs``
    over many classes: random directions of the last hidden layer's deviation from its mean there."""
    torch.manual_seed(0)
    model = create_model("vgg13_tiny").eval()
    with torch.no_grad():
        hidden = model.classifier[:-1](model.features(inputs))
        spread = hidden.std(dim=0)
        last = model.classifier[-1]
        directions = torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(0))
        last.weight.copy_(torch.where(spread > 1e-6, directions / spread.clamp(min=1e-6), 0.0))
        last.bias.copy_(-(last.weight @ hidden.mean(dim=0)))
    return model


@pytest.fixture(scope="module")
def run_folder(data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A run folder with a checkpoint ``best.pt`` of :func:`varied_model` and its ONNX export
    ``model.onnx``; returns it with the confusion matrix of that model on the test split, counted
    here from its predictions and the true classes, without the evaluator."""
    _, images, labels = data
    kept = labels >= 0
    inputs = torch.from_numpy(preprocess(images[kept]))
    model = varied_model(inputs)
    folder = tmp_path_factory.mktemp("run")
    write_model_files(folder, model)
    with torch.no_grad():
        predicted = model(inputs).argmax(dim=1).numpy()
    expected = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
    np.add.at(expected, (labels[kept], predicted), 1)
    # Predictions that vary, right and wrong: a bug in counting (a transposed matrix, labels
    # taken for predictions, a lost batch) changes this matrix.
    assert (expected.sum(axis=0) > 0).sum() >= 6 and 0 < np.trace(expected) < kept.sum()
    return folder, expected


def evaluate(argv: list[str]) -> int:
    return run_script("evaluate", *argv)


def test_checkpoint_and_onnx_give_the_models_confusion_matrix(data, run_folder, tmp_path, capsys):
    base, _, labels = data
    run_folder, expected = run_folder
    kept = int((labels >= 0).sum())
    assert evaluate([str(run_folder / "best.pt"), "-d", str(base), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    onnx_out = tmp_path / "onnx"
    assert evaluate([str(run_folder / "model.onnx"), "-d", str(base), "--output", str(onnx_out), "-b", "7"]) == 0

    # Default output: the checkpoint's folder.
    from_checkpoint = json.loads((run_folder / f"eval_best_{base.name}_test.json").read_text())
    from_onnx = json.loads((onnx_out / f"eval_model_onnx_{base.name}_test.json").read_text())
    assert from_checkpoint["format"] == "checkpoint" and from_onnx["format"] == "onnx"
    assert from_checkpoint["model"] == from_onnx["model"] == "vgg13_tiny"
    assert from_checkpoint["confusion_matrix"] == from_onnx["confusion_matrix"] == expected.tolist()
    assert from_checkpoint["accuracy"] == from_onnx["accuracy"]
    for result in (from_checkpoint, from_onnx):
        confusion = np.array(result["confusion_matrix"])
        assert confusion.shape == (NUM_EMOTIONS, NUM_EMOTIONS)
        assert result["num_images"] == confusion.sum() == kept < NUM_IMAGES
        assert result["accuracy"] == pytest.approx(np.trace(confusion) / kept)
        assert result["per_class_accuracy"] == pytest.approx({
            emotion: expected[i, i] / expected[i].sum() for i, emotion in enumerate(EMOTIONS) if expected[i].sum()
        })
    for png in (run_folder / f"eval_best_{base.name}_test.png", onnx_out / f"eval_model_onnx_{base.name}_test.png"):
        assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert f"accuracy: {100 * from_checkpoint['accuracy']:.2f}%" in printed
    assert "true \\ pred" in printed  # the confusion table


@pytest.mark.parametrize("spelling", ["val", "valid"])
def test_split_choice(data, untrained_model, tmp_path, spelling):
    base = data[0]
    assert evaluate([str(untrained_model["checkpoint"]), "-d", str(base), "--split", spelling, "--output", str(tmp_path)]) == 0
    assert json.loads((tmp_path / f"eval_best_{base.name}_val.json").read_text())["split"] == "val"
    assert (tmp_path / f"eval_best_{base.name}_val.png").is_file()


def test_other_data_folders_and_labels_never_overwrite(data, untrained_model, tmp_path):
    base = data[0]
    other = tmp_path / "other_data"
    shutil.copytree(base / "FER2013Test", other / "FER2013Test")
    out = tmp_path / "out"
    for argv in ([], ["--label", "second"]):
        assert evaluate([str(untrained_model["checkpoint"]), "-d", str(base), "--output", str(out), *argv]) == 0
    assert evaluate([str(untrained_model["checkpoint"]), "-d", str(other), "--output", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*.json"))
    assert written == sorted(f"eval_best_{label}_test.json" for label in (base.name, "second", "other_data"))
    assert json.loads((out / "eval_best_other_data_test.json").read_text())["data_folder"] == str(other / "FER2013Test")


@pytest.mark.parametrize("label", ["a/b", "..", ""])
def test_a_label_is_a_plain_name(data, untrained_model, tmp_path, label, capsys):
    base = data[0]
    argv = [str(untrained_model["checkpoint"]), "-d", str(base), "--output", str(tmp_path), "--label", label]
    assert evaluate(argv) == 2
    assert "give a plain name" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_missing_split_is_a_clear_error(data, untrained_model, tmp_path, capsys):
    base = data[0]
    status = evaluate([str(untrained_model["checkpoint"]), "-d", str(base), "--split", "train", "--output", str(tmp_path)])
    assert status == 2
    assert "FER2013Train: no such folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unreadable_onnx_is_a_clear_error(data, tmp_path, capsys):
    base = data[0]
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    assert evaluate([str(bogus), "-d", str(base)]) == 2
    assert "model.onnx: not a readable ONNX model" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_onnx_file_of_another_interface_is_refused(data, tmp_path, capsys):
    """An ONNX model with the right input but an output of another shape (a 7-class model, say)."""
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", ["Input3"], ["flat"]),
         onnx.helper.make_node("Slice", ["flat", "start", "end", "axis"], ["Plus692_Output_0"])],
        "seven_classes",
        [onnx.helper.make_tensor_value_info("Input3", onnx.TensorProto.FLOAT, ["N", 1, 64, 64])],
        [onnx.helper.make_tensor_value_info("Plus692_Output_0", onnx.TensorProto.FLOAT, ["N", 7])],
        [onnx.numpy_helper.from_array(np.array([v]), name) for name, v in (("start", 0), ("end", 7), ("axis", 1))],
    ), opset_imports=[onnx.helper.make_opsetid("", 17)])
    path = tmp_path / "seven.onnx"
    onnx.save(model, str(path))
    assert evaluate([str(path), "-d", str(data[0])]) == 2
    assert capsys.readouterr().err == (
        f"evaluate.py: error: {path}: expected one input Input3 float [N, 1, 64, 64] and one output "
        "Plus692_Output_0 float [N, 8], found inputs [Input3 tensor(float) ['N', 1, 64, 64]] "
        "and outputs [Plus692_Output_0 tensor(float) ['N', 7]]\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["seven.onnx"]


@pytest.mark.parametrize("suffix", [".json", ".png"])
def test_full_disk_is_one_line_and_exit_1(data, untrained_model, tmp_path, monkeypatch, capsys, suffix):
    output = tmp_path / "out"
    stem = f"eval_best_{data[0].name}_test"
    file = stem + suffix
    fill_disk_for(monkeypatch, file)
    assert evaluate([str(untrained_model["checkpoint"]), "-d", str(data[0]), "--output", str(output)]) == 1
    assert capsys.readouterr().err == f"evaluate.py: error: {output / file}: {os.strerror(errno.ENOSPC)}\n"
    # The JSON is written first: it stays when the picture finds the disk full; no temporary file is left.
    assert sorted(p.name for p in output.iterdir()) == ([stem + ".json"] if suffix == ".png" else [])
