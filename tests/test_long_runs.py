"""Long runs as researchers run them: progress lines in a log, resuming from the run folder
alone, and TensorBoard event files that TensorBoard's own reader reads back."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import ferplus.engine
import ferplus.progress
from ferplus.checkpoint import load_checkpoint
from ferplus.fer_format import LABEL_FILE, SPLIT_FOLDERS
from ferplus.models import create_model
from scripts import run_script

IMAGES = (96, 48, 48)  # per split, in split order: a few minibatches, so each run takes seconds
# The run a user starts with flags other than the defaults, then continues from its folder alone.
STARTED = ("-m", "crossentropy", "--model", "vgg13_tiny", "-e", "2", "-b", "32", "--device", "cpu", "--no-amp")
PROGRESS_LINE = re.compile(r"^epoch (\d+) +\d+% [\d,]+/[\d,]+ \d+ img/s eta \d+(\.\d)? (s|min|h)$")


@pytest.fixture(scope="module")
def small_data(synthetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first images of each synthetic split."""
    base = tmp_path_factory.mktemp("small") / "data"
    for count, folder in zip(IMAGES, SPLIT_FOLDERS.values()):
        lines = (synthetic_data / folder / LABEL_FILE).read_text().splitlines()[:count]
        (base / folder).mkdir(parents=True)
        for line in lines:
            name = line.split(",", 1)[0]
            shutil.copy(synthetic_data / folder / name, base / folder / name)
        (base / folder / LABEL_FILE).write_text("\n".join(lines) + "\n")
    return base


def train(*argv: object) -> int:
    return run_script("train", *argv)


def test_progress_lines_and_start_summary_in_a_log(small_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ferplus.progress, "PLAIN_LINE_SECONDS", 0.0)  # a line after every step
    output = tmp_path / "run"
    assert train("-d", small_data, *STARTED, "--output", output) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # not a terminal: the lines go to stdout, beside the epochs' lines
    lines = [line for line in captured.out.splitlines() if PROGRESS_LINE.match(line)]
    assert len(lines) >= 2 * 3  # 82 kept images at batch 32: three steps an epoch, a line after each
    assert {PROGRESS_LINE.match(line).group(1) for line in lines} == {"0", "1"}
    assert re.match(r"epoch 1 100% ([\d,]+)/\1 ", lines[-1])  # the last step of the last epoch
    parameters = sum(p.numel() for p in create_model("vgg13_tiny").parameters())
    summary = captured.out.split("epoch   0 |")[0]
    assert f"device cpu, bf16 off, eager step, {torch.get_num_threads()} CPU threads\n" in summary
    assert f"model vgg13_tiny, {parameters:,} parameters\n" in summary
    assert re.search(r"images \d+ train / \d+ val / \d+ test \(those the mode keeps\)\n", summary)
    assert f"run folder {output}\n" in summary


def interrupt_at_epoch(monkeypatch, stop: int) -> None:
    """Ctrl-C as epoch ``stop`` begins (after the earlier ones were saved)."""
    original = ferplus.engine.train_one_epoch

    def train_one_epoch(step, stream, epoch, *args, **kwargs):
        if epoch == stop:
            raise KeyboardInterrupt
        return (yield from original(step, stream, epoch, *args, **kwargs))

    monkeypatch.setattr(ferplus.engine, "train_one_epoch", train_one_epoch)


def test_resume_from_the_run_folder_alone(small_data, tmp_path, monkeypatch, capsys):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert train("-d", small_data, *STARTED, "--output", full) == 0
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 1)
        assert train("-d", small_data, *STARTED, "--output", resumed) == 130
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert hint.endswith(f"continue with python train.py --resume --output {resumed}")

    # The hint, pasted as is: the mode, model, epochs and batch size come from the run's args.json.
    assert train("--resume", "--output", resumed) == 0
    results = json.loads((resumed / "results.json").read_text())
    config = results["config"]
    assert (results["epochs"], config["training_mode"], config["model"], config["batch_size"]) == (
        2, "crossentropy", "vgg13_tiny", 32
    )
    weights = [load_checkpoint(run / "last.pt")["model_state"] for run in (full, resumed)]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])

    # Without -e, a finished run stays finished instead of training on towards the default 100.
    capsys.readouterr()
    assert train("--resume", "--output", resumed) == 0
    assert "already trained 2 epochs, nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flags, message",
    [
        (("-b", "16"), "--batch-size 16: the run in {run} was started with 32"),
        (("-m", "majority"), "--training-mode majority: the run in {run} was started with crossentropy"),
        (("--model", "vgg13"), "--model vgg13: the run in {run} was started with vgg13_tiny"),
        (("--seed", "1"), "--seed 1: the run in {run} was started with 0"),
        (("-d", "{elsewhere}"), "-d {elsewhere}: the run in {run} was trained on {data}"),
    ],
)
def test_resume_refuses_other_settings_naming_the_flag(small_data, tmp_path, monkeypatch, capsys, flags, message):
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        interrupt_at_epoch(patch, 1)
        assert train("-d", small_data, *STARTED, "--output", run) == 130
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    names = {"run": run, "data": small_data, "elsewhere": tmp_path}
    argv = [flag.format(**names) for flag in flags]
    assert train("--resume", "--output", run, *argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"train.py: error: {message.format(**names)}")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_of_a_folder_without_settings_is_one_line(tmp_path, capsys):
    assert train("--resume", "--output", tmp_path) == 2
    assert capsys.readouterr().err == (
        f"train.py: error: {tmp_path / 'args.json'}: no such file, so the run's settings are unknown; "
        "give them (-d DATA …) with --resume\n"
    )


def test_tensorboard_event_files_read_back(small_data, tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    output = tmp_path / "run"
    assert train("-d", small_data, *STARTED, "--output", output, "--tensorboard") == 0
    results = json.loads((output / "results.json").read_text())
    events = event_accumulator.EventAccumulator(str(output / "tensorboard"), size_guidance={"images": 0})
    events.Reload()

    def scalars(tag: str) -> list:
        return [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(tag)]

    history = results["history"]
    assert scalars("loss/train") == [(r["epoch"], r["train_loss"]) for r in history]
    assert scalars("accuracy/train") == [(r["epoch"], r["train_accuracy"]) for r in history]
    assert scalars("accuracy/val") == [(r["epoch"], r["val_accuracy"]) for r in history]
    assert scalars("accuracy/test") == [(r["epoch"], r["test_accuracy"]) for r in history if r["test_accuracy"] is not None]
    assert scalars("lr") == [(r["epoch"], r["lr"]) for r in history]
    assert [e.step for e in events.Scalars("speed/train_images_per_second")] == [0, 1]
    assert scalars("result/test_accuracy_at_best_epoch") == [(results["best_epoch"], results["test_accuracy"])]
    [image] = events.Images("confusion/test")
    assert image.step == results["best_epoch"] and image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["training_mode"].string_value == "crossentropy"
    assert hparams["batch_size"].number_value == 32
