"""train.py on the synthetic sample: learning in every mode, the run folder, resume, divergence, bad input."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import ferplus.engine
import ferplus.stopping
from ferplus.checkpoint import load_checkpoint, load_model, save_checkpoint
from ferplus.data import SPLIT_FOLDERS, EvalSet, TrainStream, read_folder, summary_table
from ferplus.engine import TrainConfig
from ferplus.errors import FerplusError
from ferplus.fileio import FolderLock
from ferplus.labels import EMOTIONS, MODES, process_votes
from ferplus.models import create_model
from scripts import ROOT, run_script
from test_checkpoint import flip_tensor_bytes

MODEL = "vgg13_tiny"
EPOCHS = 3
STOP_EPOCH = 1  # where the interrupted run stops before --resume
# Six epochs with the recipe's optimiser settings take the tiny model on the synthetic sample from
# chance (about 13 %) to some 30 % (majority: 33.5 % validation, 27.6 % test by epoch 4 on the
# 2-core EPYC): enough to prove learning at half the cost of twelve.
LEARNING_EPOCHS = 6
LEARNING_MARGIN = 0.1  # accuracy must beat always guessing the commonest class by this much
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_FILES = {
    "args.json", "train.log", "results.json", "best.pt", "last.pt", "curves.png", "confusion_test.png", ".lock",
}
# Fields in which an interrupted and an uninterrupted run differ by design: timings, the
# resume flag and the run folder.
#: (``checkpoint_every`` too: when a run saves on the side does not change what it trains.)
RUN_SPECIFIC_KEYS = {
    "seconds", "train_seconds", "wall_seconds", "session_wall_seconds", "train_images_per_second", "resume", "output",
    "checkpoint_every",
}


def train_cli(*argv: str) -> int:
    """Run ``train.py`` in-process with ``argv``; returns its exit status."""
    return run_script("train", *argv)


def tiny_args(data: Path, output: Path, *extra: str) -> list:
    return ["-d", data, "--model", MODEL, "--device", "cpu", "--output", output, *extra]


def majority_rate(data: Path, split: str) -> float:
    counts = EvalSet(read_folder(data / SPLIT_FOLDERS[split]), "cpu").class_counts
    return counts.max() / counts.sum()


def run_independent(value):
    """``value`` without the fields in :data:`RUN_SPECIFIC_KEYS` (at any depth)."""
    if isinstance(value, dict):
        return {k: run_independent(v) for k, v in value.items() if k not in RUN_SPECIFIC_KEYS}
    if isinstance(value, list):
        return [run_independent(v) for v in value]
    return value


def log_without_times(path: Path) -> list:
    """train.log's lines with the epoch time column blanked."""
    return [" | ".join(part for i, part in enumerate(line.split(" | ")) if i != 1) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted majority run; one stopped at STOP_EPOCH (copied aside) and then resumed."""
    root = tmp_path_factory.mktemp("runs")
    full, resumed, stopped = root / "full", root / "resumed", root / "stopped"
    assert train_cli(*tiny_args(small_data, full, "-e", EPOCHS)) == 0
    assert train_cli(*tiny_args(small_data, resumed, "-e", STOP_EPOCH)) == 0
    shutil.copytree(resumed, stopped)
    assert train_cli(*tiny_args(small_data, resumed, "-e", EPOCHS, "--resume")) == 0
    return {"full": full, "resumed": resumed, "stopped": stopped}


def folder_state(folder: Path) -> dict:
    """Every file's bytes, to show that a failed command changed nothing."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- learning -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_learns(mode, synthetic_data, tmp_path):
    assert train_cli(*tiny_args(synthetic_data, tmp_path / mode, "-m", mode, "-e", LEARNING_EPOCHS)) == 0
    results = json.loads((tmp_path / mode / "results.json").read_text())
    assert results["mode"] == mode
    assert results["best_val_accuracy"] > majority_rate(synthetic_data, "val") + LEARNING_MARGIN
    assert results["test_accuracy"] > majority_rate(synthetic_data, "test") + LEARNING_MARGIN
    history = results["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


class TaggedEvalSet(EvalSet):
    """An EvalSet that knows which split folder it holds."""

    def __init__(self, data, device) -> None:
        super().__init__(data, device)
        self.folder = data.folder.name


def confusion_of_accuracy(accuracy: float, images: int = 100) -> np.ndarray:
    """An (8, 8) confusion matrix of ``images`` images with the given accuracy."""
    confusion = np.zeros((8, 8), dtype=np.int64)
    right = round(accuracy * images)
    confusion[0, 0], confusion[1, 0] = right, images - right
    return confusion


def test_test_accuracy_is_taken_at_the_best_validation_epoch_not_the_best_test(small_data, tmp_path, monkeypatch):
    """Scripted evaluations where the curves disagree: validation peaks at epoch 1 (and ties it at
    epoch 3), test is far better at epoch 0 than at epoch 1, and better still at epochs 2-3 if asked."""
    val = [0.5, 0.7, 0.6, 0.7]
    test = [0.9, 0.3, 0.95, 0.99]
    scored = {"valid": [], "test": []}  # the epochs each split was scored at

    def scripted_evaluate(model, eval_set, *args):
        if eval_set.folder == SPLIT_FOLDERS["val"]:
            scored["valid"].append(len(scored["valid"]))
            return confusion_of_accuracy(val[scored["valid"][-1]])
        epoch = scored["valid"][-1]  # the epoch whose validation was just scored
        scored["test"].append(epoch)
        return confusion_of_accuracy(test[epoch])

    monkeypatch.setattr(ferplus.engine, "EvalSet", TaggedEvalSet)
    monkeypatch.setattr(ferplus.engine, "evaluate", scripted_evaluate)
    output = tmp_path / "run"
    assert train_cli(*tiny_args(small_data, output, "-e", len(val))) == 0
    # The test split is scored only at the epochs that improved validation: 0 and 1, never 3 (a tie).
    assert scored == {"valid": [0, 1, 2, 3], "test": [0, 1]}
    results = json.loads((output / "results.json").read_text())
    assert (results["best_epoch"], results["best_val_accuracy"], results["test_accuracy"]) == (1, 0.7, 0.3)
    assert results["test_confusion_matrix"] == confusion_of_accuracy(0.3).tolist()
    assert [r["test_accuracy"] for r in results["history"]] == [0.9, 0.3, None, None]
    assert load_checkpoint(output / "best.pt")["epoch"] == 1
    assert (output / "train.log").read_text().splitlines()[-1] == "test accuracy at the best validation epoch 30.00%"


@pytest.mark.parametrize("mode", [m for m in MODES if m != "majority"])
def test_validation_and_test_use_majority_labels_in_every_mode(mode, small_data, tmp_path):
    """Whatever the training targets, the scores count the majority-labelled images, by their majority label."""
    output = tmp_path / "run"
    assert train_cli(*tiny_args(small_data, output, "-m", mode, "-e", 1)) == 0
    results = json.loads((output / "results.json").read_text())
    votes = read_folder(small_data / SPLIT_FOLDERS["test"]).votes
    targets, keep = process_votes(votes, "majority")
    expected = np.bincount(targets[keep].argmax(axis=1), minlength=8)
    assert np.array(results["test_confusion_matrix"]).sum(axis=1).tolist() == expected.tolist()
    assert process_votes(votes, mode)[1].sum() > keep.sum()  # the mode itself keeps more images


# --- the run folder -------------------------------------------------------------------------------


def test_run_folder_contents(runs, small_data):
    folder = runs["full"]
    assert {p.name for p in folder.iterdir()} == RUN_FILES

    results = json.loads((folder / "results.json").read_text())
    history = results["history"]
    assert results["epochs"] == EPOCHS and [r["epoch"] for r in history] == list(range(EPOCHS))
    val = [r["val_accuracy"] for r in history]
    best = int(np.argmax(val))  # the first epoch of the best validation accuracy
    assert results["best_epoch"] == best and results["best_val_accuracy"] == val[best]
    assert results["test_accuracy"] == history[best]["test_accuracy"]
    # Test accuracy is computed exactly at the epochs that improved validation accuracy.
    improved = [i for i in range(EPOCHS) if val[i] > max(val[:i], default=-1.0)]
    assert [i for i, r in enumerate(history) if r["test_accuracy"] is not None] == improved
    confusion = np.array(results["test_confusion_matrix"])
    test_set = EvalSet(read_folder(small_data / SPLIT_FOLDERS["test"]), "cpu")
    assert confusion.shape == (8, 8) and confusion.sum() == test_set.num_images
    assert np.trace(confusion) / confusion.sum() == pytest.approx(results["test_accuracy"])
    assert list(results["test_per_class_accuracy"]) == list(EMOTIONS)
    assert set(results["versions"]) == {"torch", "numpy", "python"}
    assert results["device"] == "cpu" and results["train_images_per_second"] > 0
    assert [r["lr"] for r in history] == [0.005] * EPOCHS
    config = results["config"]
    assert (config["lr"], config["momentum"], config["batch_size"], config["model"]) == (0.005, 0.9, 32, MODEL)
    assert json.loads((folder / "args.json").read_text()) == config

    log = (folder / "train.log").read_text().splitlines()
    table = summary_table({
        "Train": TrainStream(read_folder(small_data / SPLIT_FOLDERS["train"]), "majority", 32, "cpu").class_counts,
        "Val": EvalSet(read_folder(small_data / SPLIT_FOLDERS["val"]), "cpu").class_counts,
        "Test": test_set.class_counts,
    }).splitlines()
    assert log[: len(table)] == table
    epoch_lines = log[len(table): len(table) + EPOCHS]
    assert [line.split(" | ")[0] for line in epoch_lines] == [f"epoch {e:3d}" for e in range(EPOCHS)]
    assert [("test acc" in line) for line in epoch_lines] == [r["test_accuracy"] is not None for r in history]
    assert log[len(table) + EPOCHS:] == [
        f"best validation accuracy {100 * val[best]:.2f}% at epoch {best}",
        f"test accuracy at the best validation epoch {100 * results['test_accuracy']:.2f}%",
    ]

    last = load_checkpoint(folder / "last.pt")
    assert last["epoch"] == EPOCHS - 1 and last["history"] == history and "optimizer_state" in last
    model, best_state = load_model(folder / "best.pt")
    assert (best_state["model"], best_state["mode"]) == (MODEL, "majority")
    assert best_state["epoch"] == best and best_state["test_accuracy"] == results["test_accuracy"]
    for name in ("curves.png", "confusion_test.png"):
        assert (folder / name).read_bytes().startswith(PNG_SIGNATURE)


def test_zero_epochs_prints_the_table_and_writes_nothing(small_data, tmp_path, capsys):
    output = tmp_path / "run"
    assert train_cli(*tiny_args(small_data, output, "-e", 0, "-m", "crossentropy")) == 0
    train = read_folder(small_data / SPLIT_FOLDERS["train"])
    expected = summary_table({
        "Train": TrainStream(train, "crossentropy", 32, "cpu").class_counts,
        "Val": EvalSet(read_folder(small_data / SPLIT_FOLDERS["val"]), "cpu").class_counts,
        "Test": EvalSet(read_folder(small_data / SPLIT_FOLDERS["test"]), "cpu").class_counts,
    })
    assert capsys.readouterr().out == expected + "\n"
    assert not output.exists()


# --- resume and divergence ------------------------------------------------------------------------


def test_resume_ends_where_an_uninterrupted_run_ends(runs):
    full, resumed = load_checkpoint(runs["full"] / "last.pt"), load_checkpoint(runs["resumed"] / "last.pt")
    assert full["model_state"].keys() == resumed["model_state"].keys()
    for key, tensor in full["model_state"].items():
        assert torch.equal(tensor, resumed["model_state"][key]), key
    for a, b in zip(full["optimizer_state"]["state"].values(), resumed["optimizer_state"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    full_results = json.loads((runs["full"] / "results.json").read_text())
    resumed_results = json.loads((runs["resumed"] / "results.json").read_text())
    assert run_independent(resumed_results) == run_independent(full_results)
    assert log_without_times(runs["resumed"] / "train.log") == log_without_times(runs["full"] / "train.log")
    # The stopped run really stopped early, so the comparison above covers a resume.
    assert load_checkpoint(runs["stopped"] / "last.pt")["epoch"] == STOP_EPOCH - 1


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(runs, small_data, tmp_path, capsys):
    output = tmp_path / "diverging"
    shutil.copytree(runs["stopped"], output)
    last_before = (output / "last.pt").read_bytes()
    status = train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume", "--lr", "1e6"))
    assert status == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.fullmatch(
        rf"train\.py: error: epoch {STOP_EPOCH}: the training loss is (nan|-?inf) \(not finite\); stopped "
        rf"\({re.escape(str(output / 'last.pt'))} keeps epoch {STOP_EPOCH - 1}\); try a lower --lr",
        err[0],
    ), err[0]
    assert (output / "last.pt").read_bytes() == last_before
    assert not list(output.glob(".*.tmp"))  # no half-written checkpoint left behind
    assert (output / "train.log").read_text().splitlines()[-1] == err[0].removeprefix("train.py: error: ")



def test_a_new_lr_applies_from_the_resumed_epoch(runs, small_data, tmp_path):
    output = tmp_path / "run"
    shutil.copytree(runs["stopped"], output)
    assert train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume", "--lr", "0.001")) == 0
    results = json.loads((output / "results.json").read_text())
    assert [r["lr"] for r in results["history"]] == [0.005] * STOP_EPOCH + [0.001] * (EPOCHS - STOP_EPOCH)
    assert results["config"]["lr"] == 0.001
    resumed, full = load_checkpoint(output / "last.pt"), load_checkpoint(runs["full"] / "last.pt")
    assert [group["lr"] for group in resumed["optimizer_state"]["param_groups"]] == [0.001]
    # The epochs before the resume are the stopped run's; the updates after it took the new rate.
    assert results["history"][:STOP_EPOCH] == load_checkpoint(runs["stopped"] / "last.pt")["history"]
    assert not all(torch.equal(a, full["model_state"][k]) for k, a in resumed["model_state"].items())


# --- bad input ------------------------------------------------------------------------------------


def _one_line_error(capsys) -> str:
    # A copied data folder's packs no longer match (new inodes): its splits are decoded with a note each.
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note: ")]
    assert len(err) == 1, err
    return err[0]


def test_missing_data_folder(tmp_path, capsys):
    assert train_cli("-d", tmp_path / "nowhere", "-e", 1) == 2
    assert _one_line_error(capsys) == f"train.py: error: {tmp_path / 'nowhere'}: no such data folder"


def test_negative_seed(small_data, tmp_path, capsys):
    assert train_cli(*tiny_args(small_data, tmp_path / "run", "-e", 1, "--seed", -1)) == 2
    assert _one_line_error(capsys) == "train.py: error: --seed -1: the seed must be a non-negative integer"
    assert not (tmp_path / "run").exists()


def test_missing_split_folder(small_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_data / SPLIT_FOLDERS["train"], data / SPLIT_FOLDERS["train"])
    assert train_cli(*tiny_args(data, tmp_path / "run", "-e", 1)) == 2
    assert _one_line_error(capsys).startswith(f"train.py: error: {data / SPLIT_FOLDERS['val']}: no such folder")
    assert not (tmp_path / "run").exists()


def test_unknown_mode(small_data, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cli("-d", small_data, "-m", "plurality")
    assert exit_info.value.code == 2
    assert "invalid choice: 'plurality'" in capsys.readouterr().err


def test_split_emptied_by_the_mode(small_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_data, data, ignore=shutil.ignore_patterns("models"))
    label_csv = data / SPLIT_FOLDERS["val"] / "label.csv"
    # Every validation image voted 'unknown' by all taggers: the majority rule keeps none.
    lines = [line.rsplit(",", 10)[0] + ",0,0,0,0,0,0,0,0,10,0" for line in label_csv.read_text().splitlines() if line]
    label_csv.write_text("\n".join(lines) + "\n")
    assert train_cli(*tiny_args(data, tmp_path / "run", "-e", 1)) == 2
    assert _one_line_error(capsys) == f"train.py: error: {data / SPLIT_FOLDERS['val']}: no images left to use in mode majority"
    assert not (tmp_path / "run").exists()


def resume_in_the_library(runs, small_data, **changes) -> str:
    """The error of resuming the stopped run through the library with ``changes`` (train.py refuses them
    before the engine sees them: tests/test_long_runs.py)."""
    settings = {"model": MODEL, "device": "cpu", "output": str(runs["stopped"]), "max_epochs": EPOCHS, "resume": True}
    config = TrainConfig(base_folder=str(small_data), **{**settings, **changes})
    with pytest.raises(FerplusError) as error:
        ferplus.engine.train(config)
    return str(error.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model": "vgg13_small"}, "checkpoint of model vgg13_tiny in mode majority, not model vgg13_small in mode majority"),
        ({"training_mode": "probability"}, "checkpoint of model vgg13_tiny in mode majority, not model vgg13_tiny in mode probability"),
    ],
)
def test_resume_from_another_model_or_mode(runs, small_data, changes, message):
    before = folder_state(runs["stopped"])
    assert resume_in_the_library(runs, small_data, **changes) == f"{runs['stopped'] / 'last.pt'}: {message}"
    assert folder_state(runs["stopped"]) == before


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"seed": 3}, "the run was started with seed 0, not 3"),
        ({"momentum": 0.5}, "the run was started with momentum 0.9, not 0.5"),
        ({"batch_size": 16}, "the run was started with batch_size 32, not 16"),
    ],
)
def test_resume_with_other_settings(runs, small_data, changes, message):
    before = folder_state(runs["stopped"])
    assert resume_in_the_library(runs, small_data, **changes) == (
        f"{runs['stopped'] / 'last.pt'}: {message}; resume with the same settings or start a new --output"
    )
    assert folder_state(runs["stopped"]) == before


def test_bad_momentum(small_data, tmp_path, capsys):
    assert train_cli(*tiny_args(small_data, tmp_path / "run", "-e", 1, "--momentum", "-1")) == 2
    assert _one_line_error(capsys) == "train.py: error: --momentum -1.0: the momentum must be in [0, 1)"
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint(small_data, tmp_path, capsys):
    output = tmp_path / "run"
    assert train_cli(*tiny_args(small_data, output, "-e", 1, "--resume")) == 2
    assert _one_line_error(capsys) == f"train.py: error: {output / 'last.pt'}: no checkpoint to resume from (start without --resume)"
    assert not output.exists()


def test_existing_run_is_not_overwritten(runs, small_data, capsys):
    before = folder_state(runs["stopped"])
    assert train_cli(*tiny_args(small_data, runs["stopped"], "-e", 1)) == 2
    assert _one_line_error(capsys) == (
        f"train.py: error: {runs['stopped']}: holds an earlier run (last.pt); choose another --output for a new one, "
        f"or continue it with: python train.py --resume --output {runs['stopped']}"
    )
    assert folder_state(runs["stopped"]) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_without_a_gpu(small_data, tmp_path, capsys):
    assert train_cli("-d", small_data, "--device", "cuda", "--output", tmp_path / "run") == 2
    assert "no CUDA GPU is available" in _one_line_error(capsys)


# --- one run per folder, kills, full disks ------------------------------------------------------


def busy_message(folder: Path) -> str:
    return f"train.py: error: {folder}: in use by another run; wait for it to end or choose another --output"


def test_a_run_folder_in_use_is_refused_at_once(runs, small_data, tmp_path, capsys):
    """A second run fails before it reads the data, and touches nothing."""
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["stopped"], resumed)
    no_data = tmp_path / "no_data"  # the second run never gets as far as finding no splits here
    no_data.mkdir()
    fresh = tmp_path / "fresh"
    # A resume takes its settings from the run folder alone; a fresh run names a data folder.
    for folder, argv in ((resumed, ("--resume", "--output", resumed)), (fresh, tiny_args(no_data, fresh, "-e", EPOCHS))):
        lock = FolderLock(folder)  # the first run's hold on its folder
        assert lock.acquire()
        before = folder_state(folder)
        try:
            assert train_cli(*argv) == 2
            captured = capsys.readouterr()
            assert (captured.out, captured.err) == ("", busy_message(folder) + "\n")
            assert folder_state(folder) == before
        finally:
            lock.release()
    assert not fresh.exists()  # the first run wrote nothing, so its folder went too


def test_killed_run_is_taken_over_and_its_temporaries_removed(small_data, tmp_path):
    output = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), *map(str, tiny_args(small_data, output, "-e", 100))]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (output / "last.pt").exists() and process.poll() is None:  # the first epoch, however long
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    # What saves cut short by kills leave, and files of the same look that are not ours.
    stale = [".last.pt.k3x_9abc.tmp", ".best.pt.0q2wz7yy.tmp", ".results.json.a1b2c3d4.tmp"]
    foreign = [".last.pt.tmp", "my.last.pt.k3x_9abc.tmp", ".notes.txt.k3x_9abc.tmp", ".last.pt.K3X9ABCD.tmp"]
    for name in stale + foreign:
        (output / name).write_bytes(b"partial")

    done = len(load_checkpoint(output / "last.pt")["history"])  # epochs trained
    assert train_cli(*tiny_args(small_data, output, "-e", done + 1, "--resume")) == 0
    assert json.loads((output / "results.json").read_text())["epochs"] == done + 1
    assert {p.name for p in output.iterdir()} == RUN_FILES | set(foreign)


@pytest.mark.parametrize(
    "file, writer, run",
    [
        ("train.log", "write_text", "stopped"),  # the log restarts before the first resumed epoch
        ("last.pt", "write_bytes", "stopped"),  # after the first resumed epoch
        ("results.json", "write_text", "full"),  # at the end of a run whose results went missing
    ],
)
def test_full_disk_names_the_file_and_keeps_the_earlier_ones(
    runs, small_data, tmp_path, monkeypatch, capsys, file, writer, run
):
    output = tmp_path / "run"
    shutil.copytree(runs[run], output)
    (output / "results.json").unlink()  # a run that finished but lost its results, or one to resume
    before = folder_state(output)
    real_write = getattr(Path, writer)

    def full_disk(path, *args, **kwargs):
        if path.name.startswith(f".{file}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(Path, writer, full_disk)
    assert train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume")) == 1
    assert _one_line_error(capsys) == f"train.py: error: {output / file}: {os.strerror(errno.ENOSPC)}"
    assert not list(output.glob(".*.tmp"))
    assert (output / file).exists() == (file in before)
    if file in before:
        assert (output / file).read_bytes() == before[file]
    assert load_checkpoint(output / "last.pt")["epoch"] >= load_checkpoint(runs[run] / "last.pt")["epoch"]


def test_resume_of_a_finished_run_writes_nothing(runs, small_data, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(runs["full"], output)
    before = folder_state(output)
    assert train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume")) == 0
    assert capsys.readouterr().out == f"{output}: already trained {EPOCHS} epochs, nothing to do (raise -e to train longer)\n"
    assert folder_state(output) == before


def test_interrupted_run_says_how_to_go_on(runs, small_data, tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    output = tmp_path / "run"
    monkeypatch.setattr(ferplus.engine, "plot_training_curves", interrupt)  # after the last epoch's checkpoint
    assert train_cli(*tiny_args(small_data, output, "-e", 1)) == 130
    assert _one_line_error(capsys) == (
        f"train.py: interrupted; {output / 'last.pt'} keeps the last save: "
        f"continue with python train.py --resume --output {output}"
    )
    # Interrupted before anything was written, there is nothing to go on from, and no folder left.
    monkeypatch.setattr(ferplus.engine, "read_data_folder", interrupt)
    assert train_cli(*tiny_args(small_data, tmp_path / "early", "-e", 1)) == 130
    assert _one_line_error(capsys) == "train.py: interrupted"
    assert not (tmp_path / "early").exists()


# --- damaged or foreign checkpoints on --resume -------------------------------------------------


def test_resume_with_weights_of_another_shape(runs, small_data, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(runs["stopped"], output)
    state = load_checkpoint(output / "last.pt")
    state["model_state"] = create_model("vgg13_small").state_dict()  # still labelled vgg13_tiny
    save_checkpoint(output / "last.pt", state)
    before = folder_state(output)
    assert train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume")) == 2
    assert re.fullmatch(
        rf"train\.py: error: {re.escape(str(output / 'last.pt'))}: its weights do not fit model {MODEL} \(.+\)",
        _one_line_error(capsys),
    )
    assert folder_state(output) == before  # args.json was not rewritten


def test_resume_from_a_checkpoint_without_training_state(runs, small_data, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(runs["stopped"], output)
    state = load_checkpoint(output / "last.pt")
    del state["optimizer_state"], state["history"], state["config"]["seed"]
    save_checkpoint(output / "last.pt", state)
    before = folder_state(output)
    assert train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume")) == 2
    assert _one_line_error(capsys) == (
        f"train.py: error: {output / 'last.pt'}: not a checkpoint to resume from: "
        "it lacks optimizer_state, history, config seed"
    )
    assert folder_state(output) == before



def test_resume_from_a_damaged_checkpoint_is_refused(runs, small_data, tmp_path, capsys):
    output = tmp_path / "run"
    shutil.copytree(runs["stopped"], output)
    flip_tensor_bytes(output / "last.pt")
    before = folder_state(output)
    assert train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume")) == 2
    assert _one_line_error(capsys) == (
        f"train.py: error: {output / 'last.pt'}: damaged: its contents do not match the digest recorded in it"
    )
    assert folder_state(output) == before


def test_resume_with_another_process_count_is_refused(runs, small_data, tmp_path, capsys):
    """A run started by two processes (torchrun) cannot go on in one: its epochs would differ."""
    output = tmp_path / "run"
    shutil.copytree(runs["stopped"], output)
    state = load_checkpoint(output / "last.pt")
    state["config"]["world_size"] = 2
    save_checkpoint(output / "last.pt", state)
    before = folder_state(output)
    assert train_cli(*tiny_args(small_data, output, "-e", EPOCHS, "--resume")) == 2
    assert _one_line_error(capsys) == (
        f"train.py: error: {output / 'last.pt'}: the run was started with 2 processes, not 1; resume with the same number"
    )
    assert folder_state(output) == before


# --- data problems found before anything is written -----------------------------------------------


def test_data_folder_given_one_level_too_deep(small_data, tmp_path, capsys):
    split = tmp_path / "data" / SPLIT_FOLDERS["train"]
    shutil.copytree(small_data / SPLIT_FOLDERS["train"], split)
    assert train_cli("-d", split, "--model", MODEL, "--device", "cpu", "-e", 1) == 2
    assert _one_line_error(capsys) == (
        f"train.py: error: {split / SPLIT_FOLDERS['train']}: no such folder "
        f"({split} is a split folder itself: give the folder above it, -d {tmp_path / 'data'})"
    )
    assert not (split / "models").exists()  # the default run folder inside it came and went


def test_fifo_named_as_an_image_does_not_hang(small_data, tmp_path, make_fifo, capsys):
    data = tmp_path / "data"
    shutil.copytree(small_data, data, ignore=shutil.ignore_patterns("models"))
    valid = data / SPLIT_FOLDERS["val"]
    first_name = (valid / "label.csv").read_text().split(",", 1)[0]
    (valid / first_name).unlink()
    make_fifo(valid / first_name)
    assert train_cli(*tiny_args(data, tmp_path / "run", "-e", 0)) == 2
    assert _one_line_error(capsys) == (
        f"train.py: error: {valid / 'label.csv'}: line 1: image {valid / first_name}: cannot be read (not a regular file)"
    )


# --- stopping at any step, and a run's end ---------------------------------------------------------

STOP_BATCH = 16  # about ten steps an epoch on the small sample, so there are steps in between
STOP_EPOCHS = 2


def stop_args(data: Path, output: Path, *extra: str) -> list:
    return tiny_args(data, output, "-e", STOP_EPOCHS, "-b", STOP_BATCH, *extra)


def stop_config(data: Path, output: Path, **settings) -> ferplus.engine.TrainConfig:
    """The run of :func:`stop_args` as the library takes it."""
    return ferplus.engine.TrainConfig(
        base_folder=str(data), model=MODEL, device="cpu", output=str(output), max_epochs=STOP_EPOCHS,
        batch_size=STOP_BATCH, **settings,
    )


@pytest.fixture(scope="module")
def uninterrupted(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert train_cli(*stop_args(small_data, output)) == 0
    return output


@pytest.fixture(scope="module")
def epoch_steps(small_data: Path) -> int:
    return len(TrainStream(read_folder(small_data / SPLIT_FOLDERS["train"]), "majority", STOP_BATCH, "cpu"))


def assert_same_run(expected: Path, found: Path) -> None:
    """Both run folders hold every file, and the same weights, momentum, history, results and log."""
    assert {p.name for p in found.iterdir()} == RUN_FILES
    a, b = load_checkpoint(expected / "last.pt"), load_checkpoint(found / "last.pt")
    assert "partial_epoch" not in b
    for key, tensor in a["model_state"].items():
        assert torch.equal(tensor, b["model_state"][key]), key
    for x, y in zip(a["optimizer_state"]["state"].values(), b["optimizer_state"]["state"].values()):
        assert torch.equal(x["momentum_buffer"], y["momentum_buffer"])
    results = [json.loads((folder / "results.json").read_text()) for folder in (expected, found)]
    assert run_independent(results[1]) == run_independent(results[0])
    assert log_without_times(found / "train.log") == log_without_times(expected / "train.log")
    for name in ("curves.png", "confusion_test.png"):
        assert (found / name).read_bytes().startswith(PNG_SIGNATURE)


def signal_after(steps, signum: int, count: int) -> BaseException:
    """Advance a run's generator, sending this process ``signum`` after its ``count``-th step; what it raised."""
    done = 0
    with pytest.raises((ferplus.engine.RunStopped, KeyboardInterrupt)) as stopped:
        for marker in steps:
            done += marker == ferplus.engine.STEP
            if marker == ferplus.engine.STEP and done == count:
                os.kill(os.getpid(), signum)
    return stopped.value


@pytest.mark.parametrize(
    "signum, epoch, position",
    [
        (signal.SIGINT, 0, "first"),  # Ctrl-C in the first epoch saves too
        (signal.SIGTERM, 0, "middle"),
        (signal.SIGTERM, 0, "last"),
        (signal.SIGINT, 1, "middle"),
        (signal.SIGTERM, 1, "last"),  # the run's very last step
    ],
)
def test_a_signal_stops_after_the_step_and_the_resumed_run_is_bit_identical(
    uninterrupted, small_data, epoch_steps, tmp_path, signum, epoch, position
):
    output = tmp_path / "run"
    step = {"first": 1, "middle": epoch_steps // 2, "last": epoch_steps}[position]
    with ferplus.stopping.stop_on_signals():
        stopped = signal_after(ferplus.engine.train_steps(stop_config(small_data, output)), signum,
                               epoch * epoch_steps + step)
    advice = (
        f"{output / 'last.pt'} keeps epoch {epoch} up to step {step} of {epoch_steps}: "
        f"continue with python train.py --resume --output {output}"
    )
    if signum == signal.SIGTERM:
        assert isinstance(stopped, ferplus.engine.RunStopped) and stopped.exit_code == 143
        assert str(stopped) == f"stopped by SIGTERM; {advice}"
    else:
        assert type(stopped) is KeyboardInterrupt and str(stopped) == advice  # train.py: exit 130
    partial = load_checkpoint(output / "last.pt")["partial_epoch"]
    assert (partial["epoch"], partial["steps"]) == (epoch, step)
    assert not (output / "results.json").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handlers are put back

    assert train_cli(*stop_args(small_data, output, "--resume")) == 0
    assert_same_run(uninterrupted, output)


def test_sigterm_to_a_training_process(uninterrupted, small_data, tmp_path):
    output = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train.py"), *map(str, stop_args(small_data, output))]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # bit-identity needs equal threads
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300  # a guard against a test that would wait forever, not a speed check
        log = output / "train.log"
        while process.poll() is None and time.monotonic() < deadline and (
            not log.exists() or "epoch   0 |" not in log.read_text()
        ):
            time.sleep(0.02)
        assert process.poll() is None, "the run ended before it could be stopped"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 143
    assert re.fullmatch(
        # in epoch 1, or at its start if the signal came while epoch 0 was saved
        rf"train\.py: error: stopped by SIGTERM; {re.escape(str(output / 'last.pt'))} keeps epoch "
        rf"(0|1 up to step \d+ of \d+): continue with python train\.py --resume --output {re.escape(str(output))}",
        err.strip(),
    ), err
    assert train_cli(*stop_args(small_data, output, "--resume")) == 0
    assert_same_run(uninterrupted, output)


def test_checkpoints_on_a_timer_resume_mid_epoch(uninterrupted, small_data, epoch_steps, tmp_path):
    done = epoch_steps + 3
    for every, saved in ((0, False), (1e-9, True)):  # 0: only at epoch ends; a tiny interval: after every step
        output = tmp_path / f"every{every}"
        steps = ferplus.engine.train_steps(stop_config(small_data, output, checkpoint_every=every))
        for _ in range(done + 1):  # STEP markers and the first epoch's EPOCH_SAVED
            next(steps)
        steps.close()  # as a kill would leave it, once the last save is on disk
        state = load_checkpoint(output / "last.pt")
        assert ("partial_epoch" in state) == saved
        if saved:  # the save after step 3 would come when the run went on from its yield
            assert (state["partial_epoch"]["epoch"], state["partial_epoch"]["steps"]) == (1, 2)
    assert train_cli(*stop_args(small_data, output, "--resume")) == 0
    assert_same_run(uninterrupted, output)


def test_a_mid_epoch_checkpoint_needs_the_epoch_it_stopped_in(small_data, epoch_steps, tmp_path, capsys):
    output = tmp_path / "run"
    with ferplus.stopping.stop_on_signals():
        signal_after(ferplus.engine.train_steps(stop_config(small_data, output)), signal.SIGTERM, epoch_steps + 1)
    assert train_cli(*tiny_args(small_data, output, "-b", STOP_BATCH, "-e", 1, "--resume")) == 2
    assert _one_line_error(capsys) == (
        f"train.py: error: {output / 'last.pt'}: stopped partway through epoch 1; resume with --max-epochs 2 or more"
    )


def test_bad_checkpoint_interval(small_data, tmp_path, capsys):
    assert train_cli(*tiny_args(small_data, tmp_path / "run", "--checkpoint-every", "-1")) == 2
    assert "--checkpoint-every -1.0" in _one_line_error(capsys)


def test_interleaved_runs_all_stop_and_resume_as_alone(uninterrupted, small_data, tmp_path, monkeypatch):
    from ferplus import multirun

    alone = tmp_path / "alone"
    assert train_cli(*stop_args(small_data, alone, "--seed", 1)) == 0
    outputs = [tmp_path / "seed0", tmp_path / "seed1"]
    configs = [stop_config(small_data, outputs[seed], seed=seed) for seed in (0, 1)]
    real_advance, done = multirun.InterleavedRun.advance, []

    def advance(self):
        marker = real_advance(self)
        done.append(marker)
        if done.count(ferplus.engine.STEP) == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return marker

    monkeypatch.setattr(multirun.InterleavedRun, "advance", advance)
    with pytest.raises(ferplus.engine.RunStopped):
        multirun.train_interleaved(configs, jobs=2)
    steps = [load_checkpoint(output / "last.pt")["partial_epoch"]["steps"] for output in outputs]
    assert sorted(steps) == [3, 4]  # each finished the step it was in, then saved
    monkeypatch.undo()
    for output, expected in zip(outputs, (uninterrupted, alone)):
        assert train_cli(*stop_args(small_data, output, "--seed", output.name[-1], "--resume")) == 0
        assert_same_run(expected, output)


@pytest.mark.parametrize("failure", ["interrupt", "full disk"])
def test_a_run_stopped_while_writing_its_end_is_completed_on_resume(
    uninterrupted, small_data, tmp_path, monkeypatch, capsys, failure
):
    output = tmp_path / "run"

    def fail(*args, **kwargs):
        if failure == "interrupt":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(output / "confusion_test.png"))

    monkeypatch.setattr(ferplus.engine, "plot_confusion_matrix", fail)  # after results.json, on the base code
    assert train_cli(*stop_args(small_data, output)) == (130 if failure == "interrupt" else 1)
    if failure == "interrupt":
        assert _one_line_error(capsys) == (
            f"train.py: interrupted; {output / 'last.pt'} keeps the last save: "
            f"continue with python train.py --resume --output {output}"
        )
    assert not (output / "results.json").exists()  # so the run is not taken for finished
    monkeypatch.undo()
    capsys.readouterr()
    assert train_cli(*stop_args(small_data, output, "--resume")) == 0
    assert "nothing to do" not in capsys.readouterr().out
    assert_same_run(uninterrupted, output)
    # A run finished by an earlier version, whose plots went missing, is completed too.
    (output / "curves.png").unlink()
    assert train_cli(*stop_args(small_data, output, "--resume")) == 0
    assert_same_run(uninterrupted, output)


def test_the_confusion_matrix_is_counted_on_the_device_without_bincount(monkeypatch):
    from ferplus.runtime import confusion_matrix

    def bincount(*args, **kwargs):
        raise AssertionError("bincount reads its input's min and max on the host: two syncs per batch")

    monkeypatch.setattr(torch, "bincount", bincount)
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(n, 8, generator=generator), torch.randint(0, 8, (n,), generator=generator))
               for n in (5, 256, 17)]
    confusion = confusion_matrix(lambda scores: scores, batches)
    expected = np.zeros((8, 8), np.int64)
    for scores, labels in batches:
        np.add.at(expected, (labels.numpy(), scores.argmax(1).numpy()), 1)
    assert confusion.dtype == torch.int64 and np.array_equal(confusion.numpy(), expected)


@pytest.mark.cuda
def test_evaluation_makes_no_host_sync_per_batch():
    from ferplus.runtime import confusion_matrix

    model = create_model(MODEL).cuda().eval()
    inputs = torch.randn(600, 1, 64, 64, device="cuda")
    labels = torch.randint(0, 8, (600,), device="cuda")
    batches = [(inputs[i:i + 256], labels[i:i + 256]) for i in range(0, 600, 256)]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            confusion = confusion_matrix(model, batches)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(confusion.sum()) == 600
