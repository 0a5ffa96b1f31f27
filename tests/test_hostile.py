"""What a hostile user tries: special files and inputs as outputs, non-finite models, foreign ONNX
graphs, checkpoints with odd fields, flags beyond what the libraries take, unprintable paths."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import cv2
import numpy as np
import pytest
import torch

import ferplus.reproduce as reproduce_module
from ferplus.checkpoint import load_checkpoint, save_checkpoint
from ferplus.datasets import FERPlus
from ferplus.engine import format_final_lines
from ferplus.errors import FerplusError, run_cli
from ferplus.fileio import atomic_write, refuse_input
from ferplus.images import UnreadableImage, read_image_file
from ferplus.models import create_model
from ferplus.onnx_export import verify_onnx
from ferplus.reproduce import reproduce, run_folder
from ferplus.scorers import OnnxModel
from scripts import ROOT, run_script

sys.path.insert(0, str(ROOT / "benchmarks"))
from faults import ODD_NAME, write_checkpoint_fields, write_onnx  # noqa: E402  (the hostile files, made in one place)

MODEL = "vgg13_tiny"
SCRIPTS = ("train", "generate_training_data", "evaluate", "predict", "export_onnx", "reproduce", "export_labels")


def one_line_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def tiny_state(**changes: Any) -> Dict[str, Any]:
    torch.manual_seed(0)
    state = {"model": MODEL, "mode": "majority", "model_state": create_model(MODEL).state_dict(), "epoch": 0}
    return {**state, **changes}


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8))
    return path


# ---------------------------------------------------------------------------------------------
# Output targets: special files and the tool's own inputs


def _special_files(folder: Path) -> Dict[str, Path]:
    made = {"folder": folder / "folder.onnx"}
    made["folder"].mkdir()
    os.mkfifo(folder / "fifo.onnx")
    made["fifo"] = folder / "fifo.onnx"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(folder / "socket.onnx"))
    server.close()
    made["socket"] = folder / "socket.onnx"
    try:  # a copy of /dev/null: a device node, made only where the process may (as root)
        os.mknod(folder / "device.onnx", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        made["device"] = folder / "device.onnx"
    except PermissionError:
        pass
    return made


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes and sockets need a POSIX system")
def test_writers_refuse_targets_that_are_not_regular_files(tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, tiny_state())
    for kind, target in _special_files(tmp_path).items():
        mode = os.lstat(target).st_mode
        with pytest.raises(OSError) as raised:
            atomic_write(target, lambda tmp: Path(tmp).write_text("x"))
        assert raised.value.filename == str(target), kind
        # Every tool writes through atomic_write: export_onnx.py stands for them.
        assert run_script("export_onnx", checkpoint, target) == 2
        assert one_line_error(capsys).startswith(f"export_onnx.py: error: {target}: "), kind
        assert os.lstat(target).st_mode == mode, f"the {kind} was replaced"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporaries


def test_no_tool_writes_over_its_input(tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, tiny_state())
    before = checkpoint.read_bytes()
    os.link(checkpoint, tmp_path / "linked.onnx")
    for output in (checkpoint, tmp_path / "linked.onnx", tmp_path / "." / "best.pt"):
        assert run_script("export_onnx", checkpoint, output) == 2
        assert "is the input" in one_line_error(capsys)
        assert checkpoint.read_bytes() == before
    with pytest.raises(FerplusError, match="--annotate .*is the input"):
        refuse_input(tmp_path / "linked.onnx", [tmp_path / "missing.png", checkpoint], "--annotate")
    refuse_input(tmp_path / "new.onnx", [checkpoint])  # a new file is never an input


# ---------------------------------------------------------------------------------------------
# Non-finite models


def _nan_weights() -> Dict[str, torch.Tensor]:
    weights = tiny_state()["model_state"]
    name = next(key for key, value in weights.items() if value.is_floating_point())
    weights[name] = torch.full_like(weights[name], float("nan"))
    return weights


def _huge_weights() -> Dict[str, torch.Tensor]:
    """Finite weights whose scores overflow to infinity."""
    return {key: value * 1e30 if value.is_floating_point() else value for key, value in tiny_state()["model_state"].items()}


@pytest.mark.parametrize("script", ["evaluate", "export_onnx", "predict"])
def test_checkpoints_with_non_finite_weights_are_refused_at_load(script, synthetic_data, tmp_path, photo, capsys):
    path = tmp_path / "best.pt"
    save_checkpoint(path, tiny_state(model_state=_nan_weights()))
    out = tmp_path / "out"
    argv = {
        "evaluate": [path, "-d", synthetic_data, "--device", "cpu", "--output", out],
        "export_onnx": [path, out / "model.onnx"],
        "predict": ["--model", path, "--no-detect", photo],
    }[script]
    assert run_script(script, *argv) == 2
    error = one_line_error(capsys)
    assert error.startswith(f"{script}.py: error: {path}: ") and "non-finite weights" in error
    assert not out.exists()


def test_models_with_non_finite_scores_are_refused(synthetic_data, tmp_path, photo, capsys):
    path = tmp_path / "best.pt"
    save_checkpoint(path, tiny_state(model_state=_huge_weights()))
    assert run_script("evaluate", path, "-d", synthetic_data, "--device", "cpu", "--output", tmp_path / "out") == 2
    assert "non-finite scores" in one_line_error(capsys)
    assert run_script("predict", "--model", path, "--no-detect", photo) == 2
    captured = capsys.readouterr()
    assert "nan" not in captured.out and "non-finite scores" in captured.err
    assert run_script("export_onnx", path, tmp_path / "model.onnx") == 2
    assert "non-finite scores" in one_line_error(capsys) and not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("fill", [float("nan"), float("inf")])
def test_onnx_files_with_non_finite_scores_are_refused(fill, synthetic_data, tmp_path, capsys):
    path = write_onnx(tmp_path / "model.onnx", fill=fill)
    assert run_script("evaluate", path, "-d", synthetic_data, "--output", tmp_path / "out") == 2
    assert one_line_error(capsys) == f"evaluate.py: error: {path}: the model gives non-finite scores " \
                                     "(NaN or infinity): it is broken, not used"
    assert not (tmp_path / "out").exists()


def test_export_verification_fails_on_nan(tmp_path):
    """Python's max(0.0, nan) is 0.0: a NaN difference must fail however it arises."""
    path = write_onnx(tmp_path / "model.onnx", fill=float("nan"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 64, 8))
    with pytest.raises(FerplusError, match="non-finite scores"):
        verify_onnx(path, model, torch.randn(4, 1, 64, 64))


# ---------------------------------------------------------------------------------------------
# ONNX files beyond the exported interface


def test_onnx_control_flow_and_fixed_batches_are_refused(synthetic_data, tmp_path, capsys):
    cases = {
        write_onnx(tmp_path / "loop.onnx", loop=3): "holds control flow (Loop)",
        write_onnx(tmp_path / "batch1.onnx", batch=1): "expected one input Input3 float [N, 1, 64, 64]",
    }
    for path, message in cases.items():
        assert run_script("evaluate", path, "-d", synthetic_data, "--output", tmp_path / "out") == 2
        error = one_line_error(capsys)
        assert error.startswith(f"evaluate.py: error: {path}: ") and message in error


def test_onnx_metadata_is_parsed_defensively(tmp_path):
    path = write_onnx(tmp_path / "model.onnx", metadata={"epoch": "²", "model": "١٢", "mode": "7"})
    assert OnnxModel(path).metadata == {"epoch": "²", "model": "١٢", "mode": 7}


# ---------------------------------------------------------------------------------------------
# Checkpoints with a right digest and odd fields


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"model": ["vgg13"]}, "its model ['vgg13'] is not a model name"),
        ({"model_state": [1, 2]}, "its model_state is not a state dict (names to tensors)"),
        ({"model_state": {"w": [1.0]}}, "its model_state is not a state dict (names to tensors)"),
        ({"epoch": "3"}, "its epoch '3' is not an epoch number"),
        ({"history": 5}, "its history is not a list of epochs"),
        ({"history": ["epoch 0"]}, "its history[0] is not an epoch record"),
        ({"history": [{"epoch": 0}]}, "its history[0] train_loss None is not a finite number"),
        ({"best_val_accuracy": None}, "its best_val_accuracy None is not an accuracy"),
        ({"test_confusion": [[1, 2]]}, "its test_confusion is not a square table of counts"),
    ],
)
def test_odd_checkpoint_fields_are_one_line_errors(changes, field, tmp_path):
    path = write_checkpoint_fields(tmp_path / "best.pt", **changes)
    with pytest.raises(FerplusError) as raised:
        load_checkpoint(path)
    assert str(raised.value) == f"{path}: not a usable checkpoint: {field}"


@pytest.mark.parametrize("script", ["evaluate", "predict", "export_onnx", "train"])
def test_odd_checkpoints_are_refused_by_every_tool(script, synthetic_data, tmp_path, photo, capsys):
    run = tmp_path / "run"
    run.mkdir()
    path = write_checkpoint_fields(run / "last.pt", history=[1, 2], best_val_accuracy=None)
    argv = {
        "evaluate": [path, "-d", synthetic_data, "--device", "cpu"],
        "predict": ["--model", path, "--no-detect", photo],
        "export_onnx": [path, tmp_path / "model.onnx"],
        "train": ["-d", synthetic_data, "--model", MODEL, "-m", "majority", "-e", "3", "--device", "cpu",
                  "--output", run, "--resume"],
    }[script]
    assert run_script(script, *argv) == 2
    assert one_line_error(capsys) == f"{script}.py: error: {path}: not a usable checkpoint: " \
                                     "its history[0] is not an epoch record"
    assert sorted(p.name for p in run.iterdir() if p.name != ".lock") == ["last.pt"]  # nothing written


# ---------------------------------------------------------------------------------------------
# Flags beyond what numpy, torch and float32 take


@pytest.mark.parametrize("flag, value", [("--seed", 2**64), ("--seed", 2**63), ("--lr", "1e39"), ("--lr", "1e7")])
def test_train_flags_out_of_range_fail_before_writing(flag, value, synthetic_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["-d", synthetic_data, "--model", MODEL, "-e", "1", "--device", "cpu", "--output", run, flag, value]
    assert run_script("train", *argv) == 2
    assert one_line_error(capsys).startswith(f"train.py: error: {flag} ")
    assert not run.exists()


def test_huge_verify_batch_is_one_line(tmp_path, capsys):
    path = tmp_path / "best.pt"
    save_checkpoint(path, tiny_state())
    assert run_script("export_onnx", path, tmp_path / "model.onnx", "--verify-batch", 100_000_000) == 2
    assert one_line_error(capsys).startswith("export_onnx.py: error: --verify-batch 100000000: ")


def test_a_failed_cpu_allocation_is_out_of_memory(capsys):
    def allocate(args):
        torch.empty(2**62, dtype=torch.uint8)

    import argparse

    assert run_cli(allocate, argparse.ArgumentParser(prog="tool.py"), []) == 1
    assert one_line_error(capsys).startswith("tool.py: error: out of memory (")


@pytest.mark.parametrize("argument", ["split", "mode"])
def test_dataset_arguments_of_the_wrong_type_are_value_errors(argument, synthetic_data):
    with pytest.raises(ValueError, match=f"unknown {argument}"):
        FERPlus(synthetic_data, **{argument: ["train"]})


# ---------------------------------------------------------------------------------------------
# Images whose size cannot be read before decoding


def _radiance_hdr(path: Path, width: int, height: int) -> Path:
    """A Radiance HDR file (which OpenCV decodes and Pillow cannot read), run-length encoded."""
    line = bytearray([2, 2, width >> 8, width & 255])
    for component in range(4):
        left = width
        while left:
            run = min(127, left)
            line += bytes([128 + run, 128 if component == 3 else 100])
            left -= run
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {height} +X {width}\n".encode()
                     + bytes(line) * height)
    return path


def test_images_whose_size_pillow_cannot_read_are_not_decoded(tmp_path):
    path = _radiance_hdr(tmp_path / "photo.png", 64, 64)
    assert cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_GRAYSCALE).shape == (64, 64)
    with pytest.raises(UnreadableImage, match="size can be checked before decoding"):
        read_image_file(path, cv2.IMREAD_GRAYSCALE)


# ---------------------------------------------------------------------------------------------
# reproduce.py: forged results, modes named twice, its own advice


def _finished_run(folder: Path, test_accuracy: float = 0.25) -> Path:
    """A one-epoch run folder as the trainer leaves it (weights untrained)."""
    record = {"epoch": 0, "train_loss": 2.0, "train_accuracy": 0.2, "val_accuracy": 0.3, "test_accuracy": test_accuracy,
              "lr": 0.05, "seconds": 1.0, "train_seconds": 1.0, "train_images": 10}
    best = {"best_val_accuracy": 0.3, "best_epoch": 0, "test_accuracy": test_accuracy, "test_confusion": [[1]]}
    state = tiny_state(history=[record], config={}, optimizer_state={}, **best)
    folder.mkdir(parents=True)
    save_checkpoint(folder / "last.pt", state)
    save_checkpoint(folder / "best.pt", state)
    (folder / "train.log").write_text("epochs\n" + format_final_lines(0.3, 0, test_accuracy))
    results = {"mode": "majority", "epochs": 1, **best, "history": [record]}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def _no_training(configs, *args):
    if configs:
        raise AssertionError(f"trained {[config.output for config in configs]}")
    return []


def test_reproduce_takes_only_results_that_match_their_run(synthetic_data, tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce_module, "train_runs", _no_training)
    root = tmp_path / "reproduce"
    folder = _finished_run(run_folder(root, MODEL, "majority", 0))
    rows = reproduce(str(synthetic_data), seeds=1, modes=("majority",), max_epochs=1, model=MODEL, output=str(root))
    assert rows[0]["mean_test_accuracy"] == pytest.approx(25.0)

    results = folder / "results.json"
    genuine = json.loads(results.read_text())
    for forged, differs in (({"test_accuracy": 1.0}, "test_accuracy"), ({"best_epoch": 1}, "best_epoch")):
        results.write_text(json.dumps({**genuine, **forged}))
        with pytest.raises(FerplusError) as raised:
            reproduce(str(synthetic_data), seeds=1, modes=("majority",), max_epochs=1, model=MODEL, output=str(root))
        assert str(raised.value).startswith(f"{results}: refused: ") and differs in str(raised.value)
    # A forged log and checkpoints pair (another run's best.pt, an edited train.log) is refused as well.
    results.write_text(json.dumps(genuine))
    (folder / "train.log").write_text("epochs\n" + format_final_lines(0.3, 0, 1.0))
    with pytest.raises(FerplusError, match="train.log"):
        reproduce(str(synthetic_data), seeds=1, modes=("majority",), max_epochs=1, model=MODEL, output=str(root))
    assert not (root / "reproduce.md").read_text().count("100.000")


def test_reproduce_modes_named_twice_train_once(synthetic_data, tmp_path, monkeypatch):
    trained: List[str] = []

    def record(configs, *args):
        trained.extend(config.output for config in configs)
        return [None] * len(configs)

    monkeypatch.setattr(reproduce_module, "train_runs", record)
    reproduce(str(synthetic_data), seeds=2, modes=("majority", "majority"), max_epochs=1, model=MODEL,
              output=str(tmp_path / "root"))
    assert sorted(trained) == sorted({*trained}) and len(trained) == 2


def test_reproduce_advice_after_ctrl_c_names_its_own_command(synthetic_data, tmp_path, monkeypatch, capsys):
    def interrupted(configs, *args):
        raise KeyboardInterrupt(f"{configs[0].output}/last.pt keeps the last finished epoch: continue with --resume")

    monkeypatch.setattr(reproduce_module, "train_runs", interrupted)
    root = tmp_path / "my root"
    argv = ["-d", synthetic_data, "--seeds", 1, "--modes", "majority", "-e", 1, "--model", MODEL, "--output", root]
    assert run_script("reproduce", *argv) == 130
    error = one_line_error(capsys)
    assert "--resume" not in error and error.startswith(f"reproduce.py: interrupted; every finished epoch is kept")
    command = error.split("resume with: ")[1]
    assert command.startswith("reproduce.py -d ") and f"'{root}'" in command and "--modes majority" in command


# ---------------------------------------------------------------------------------------------
# Paths the terminal cannot show

# Each tool in turn, in one process, its streams strict again before each: every tool must make
# its own output safe. Prints one JSON line: {tool: [exit status or exception name, stderr]}.
ALL_TOOLS = r"""
import io, json, sys
sys.path.insert(0, sys.argv[1])
from scripts import run_script
odd, data = sys.argv[2], sys.argv[3]
cases = {
    "train": ["-d", odd + "/data", "--device", "cpu"],
    "generate_training_data": ["-d", odd + "/out", "-fer", odd + "/fer2013.csv"],
    "evaluate": [odd + "/best.pt", "-d", data],
    "predict": ["--model", odd + "/best.pt", "photo.png"],
    "export_onnx": [odd + "/best.pt", "model.onnx"],
    "reproduce": ["-d", odd + "/data", "--seeds", "1", "--modes", "majority", "-e", "1", "--device", "cpu"],
    "export_labels": ["-d", odd + "/data", "--csv", "labels"],
}
outcome = {}
real_stderr = sys.stderr
for tool, argv in cases.items():
    sys.stderr = io.TextIOWrapper(io.BytesIO(), encoding=real_stderr.encoding, errors="strict")
    try:
        status = run_script(tool, *argv)
    except BaseException as e:
        status = type(e).__name__
    sys.stderr.flush()
    outcome[tool] = [status, sys.stderr.buffer.getvalue().decode(real_stderr.encoding)]
sys.stderr = real_stderr
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("encoding", ["utf-8", "ascii"])
def test_every_tool_prints_any_path(encoding, synthetic_data, tmp_path):
    env = {**os.environ, "PYTHONIOENCODING": encoding, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", ALL_TOOLS, str(ROOT / "tests"), ODD_NAME, str(synthetic_data)],
                            capture_output=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert sorted(outcome) == sorted(SCRIPTS)
    for tool, (status, err) in outcome.items():
        assert status == 2, (tool, status, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"{tool}.py: error: ") and "\\xff" in lines[0], (tool, err)


def test_a_run_in_an_unprintable_folder_finishes(synthetic_data, tmp_path):
    """train.py's last print names the run folder: it must not fail before results.json is written."""
    run = tmp_path / ODD_NAME
    argv = ["-d", str(synthetic_data), "--model", MODEL, "-e", "1", "-b", "256", "--device", "cpu", "--output", str(run)]
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, env=env)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"run folder: " in result.stdout and (run / "results.json").is_file()


def test_onnx_files_under_an_undecodable_path_work(synthetic_data, tmp_path, capsys):
    """onnxruntime and the ONNX checker open files by a text path, which a 0xff byte breaks."""
    folder = tmp_path / ODD_NAME
    folder.mkdir()
    checkpoint = folder / "best.pt"
    save_checkpoint(checkpoint, tiny_state())
    assert run_script("export_onnx", checkpoint, folder / "model.onnx") == 0
    assert run_script("evaluate", folder / "model.onnx", "-d", synthetic_data) == 0
    assert (folder / f"eval_model_onnx_{synthetic_data.name}_test.json").is_file()
