"""Checkpoints: a digest of the contents checked on every load, one-line errors for every bad file,
saves on a background thread, and the file helpers of run folders (lock, temporaries, regular files only)."""

from __future__ import annotations

import errno
import os
import struct
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import ferplus.checkpoint
from ferplus.checkpoint import (
    DIGEST_KEY,
    FORMAT,
    CheckpointWriter,
    content_digest,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from ferplus.fileio import FolderLock, read_regular_file
from ferplus.models import create_model
from scripts import run_script

MODEL = "vgg13_tiny"
FLIPPED_BYTES = 64
ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then the name and extra-field lengths


def write_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    state = {"model": MODEL, "mode": "majority", "model_state": create_model(MODEL).state_dict(), "epoch": 1}
    save_checkpoint(path, state)
    return path


def flip_tensor_bytes(path: Path) -> None:
    """Invert FLIPPED_BYTES bytes in the middle of the largest tensor's data, as bit rot would."""
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    assert entry.compress_type == zipfile.ZIP_STORED and "/data/" in entry.filename
    data = bytearray(path.read_bytes())
    _, name_length, extra_length = ZIP_LOCAL_HEADER.unpack_from(data, entry.header_offset)
    start = entry.header_offset + ZIP_LOCAL_HEADER.size + name_length + extra_length + entry.file_size // 2
    data[start:start + FLIPPED_BYTES] = bytes(b ^ 0xFF for b in data[start:start + FLIPPED_BYTES])
    path.write_bytes(bytes(data))


def save_with_digest(path: Path, payload: dict) -> None:
    """Write ``payload`` as save_checkpoint would, keys missing or not: as another tool might."""
    payload = {"format": FORMAT, **payload}
    payload[DIGEST_KEY] = content_digest(payload)
    torch.save(payload, path)


class RunsCode:
    """Unpickling this would call print: what weights-only loading refuses."""

    def __reduce__(self):
        return print, ("code ran",)


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def photo(tmp_path) -> Path:
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.full((48, 48), 100, np.uint8))
    return path


def test_round_trip_keeps_the_digest(tmp_path):
    path = write_checkpoint(tmp_path / "best.pt")
    state = load_checkpoint(path)
    assert state["format"] == FORMAT and state[DIGEST_KEY] == content_digest(state)
    model, _ = load_model(path)
    torch.manual_seed(0)
    expected = create_model(MODEL).state_dict()
    assert all(torch.equal(model.state_dict()[key], value) for key, value in expected.items())


def test_digest_covers_values_and_metadata(tmp_path):
    state = load_checkpoint(write_checkpoint(tmp_path / "best.pt"))
    digest = content_digest(state)
    nudged = {**state, "model_state": {**state["model_state"]}}
    first = next(iter(nudged["model_state"]))
    nudged["model_state"][first] = nudged["model_state"][first].clone()
    nudged["model_state"][first].view(-1)[0] += 1e-6
    assert content_digest(nudged) != digest
    assert content_digest({**state, "epoch": 2}) != digest
    assert content_digest({**state, "epoch": 1.0}) != digest  # the type counts too


@pytest.mark.parametrize("script", ["evaluate", "export_onnx", "predict"])
def test_damaged_checkpoint_is_never_used(script, synthetic_data, tmp_path, photo, capsys):
    path = write_checkpoint(tmp_path / "run" / "best.pt")
    flip_tensor_bytes(path)
    torch.load(path, weights_only=True)  # the damage is invisible to torch itself
    out = tmp_path / "out"
    argv = {
        "evaluate": [path, "-d", synthetic_data, "--device", "cpu", "--output", out],
        "export_onnx": [path, out / "model.onnx"],
        "predict": ["--model", path, "--no-detect", "--annotate", out, photo],
    }[script]
    assert run_script(script, *argv) == 2
    assert one_line_error(capsys) == (
        f"{script}.py: error: {path}: damaged: its contents do not match the digest recorded in it"
    )
    assert not out.exists()  # nothing scored, nothing written
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"mode": "majority", "model_state": {}}, "not a usable checkpoint: it lacks model"),
        ({"model": MODEL}, "not a usable checkpoint: it lacks mode, model_state"),
        ({"model": MODEL, "mode": "majority", "model_state": [1, 2]}, "its model_state is not a state dict"),
        ({"model": "resnet", "mode": "majority", "model_state": {}}, "unknown model 'resnet'"),
        ({"model": MODEL, "mode": "majority", "model_state": {"w": torch.zeros(2)}}, "weights do not fit model"),
    ],
)
def test_incomplete_checkpoints_are_one_line_errors(payload, message, tmp_path, photo, capsys):
    path = tmp_path / "best.pt"
    save_with_digest(path, payload)
    assert run_script("predict", "--model", path, "--no-detect", photo) == 2
    error = one_line_error(capsys)
    assert error.startswith(f"predict.py: error: {path}: ") and message in error


def test_foreign_and_unreadable_files(tmp_path, photo, capsys):
    cases = {}
    cases["code.pt"] = "refused: it holds Python objects other than tensors and plain data, which could run code"
    torch.save({"format": FORMAT, "payload": RunsCode()}, tmp_path / "code.pt")
    cases["truncated.pt"] = "not a readable checkpoint (damaged, truncated or not a PyTorch file)"
    (tmp_path / "truncated.pt").write_bytes(write_checkpoint(tmp_path / "whole.pt").read_bytes()[:500])
    cases["text.pt"] = cases["truncated.pt"]
    (tmp_path / "text.pt").write_text("hello")
    cases["older.pt"] = f"not a FER+ checkpoint (expected format {FORMAT})"
    torch.save({"format": "ferplus-checkpoint-1", "model": MODEL}, tmp_path / "older.pt")
    cases["no_digest.pt"] = "damaged: its contents do not match the digest recorded in it"
    torch.save({"format": FORMAT, "model": MODEL, "mode": "majority", "model_state": {}}, tmp_path / "no_digest.pt")
    for name, message in cases.items():
        assert run_script("predict", "--model", tmp_path / name, "--no-detect", photo) == 2
        assert one_line_error(capsys) == f"predict.py: error: {tmp_path / name}: {message}"
        assert "code ran" not in capsys.readouterr().out


def test_model_folder_says_what_to_pass(tmp_path, photo, capsys):
    run = tmp_path / "run"
    write_checkpoint(run / "best.pt")
    assert run_script("predict", "--model", run, photo) == 2
    assert one_line_error(capsys) == (
        f"predict.py: error: {run}: is a folder; pass a checkpoint file in it (such as {run / 'best.pt'})"
    )


# --- the file helpers ------------------------------------------------------------------------------


def test_folder_lock_is_exclusive_and_leaves_no_trace(tmp_path):
    folder = tmp_path / "a" / "run"
    first, second = FolderLock(folder), FolderLock(folder)
    assert first.acquire()
    assert not second.acquire()  # another open file description: another run
    first.release()
    assert not (tmp_path / "a").exists()  # created by the lock and still empty: removed again
    assert second.acquire()
    (folder / "args.json").write_text("{}")
    second.release()
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "args.json"]  # a used folder stays


def test_only_regular_files_are_read(tmp_path, make_fifo):
    (tmp_path / "file").write_bytes(b"data")
    assert read_regular_file(tmp_path / "file") == b"data"
    for path in (make_fifo(tmp_path / "fifo"), tmp_path):
        with pytest.raises(OSError, match="not a regular file"):
            read_regular_file(path)


def test_unknown_types_are_refused_when_saving(tmp_path):
    with pytest.raises(TypeError, match="not set"):
        save_checkpoint(tmp_path / "x.pt", {"model": MODEL, "mode": "majority", "model_state": {}, "extra": {1, 2}})
    assert list(tmp_path.iterdir()) == []


# --- saves on a background thread ---------------------------------------------------------------


def model_state(memory_format=torch.contiguous_format) -> dict:
    torch.manual_seed(0)
    return {"model": MODEL, "mode": "majority", "epoch": 3,
            "model_state": create_model(MODEL).to(memory_format=memory_format).state_dict()}


def test_writer_saves_in_the_background_from_a_copy(tmp_path, monkeypatch):
    state = model_state()
    expected = {key: tensor.clone() for key, tensor in state["model_state"].items()}
    entered, release = threading.Event(), threading.Event()
    real_serialise = ferplus.checkpoint.serialise

    def held_serialise(payload):
        entered.set()
        assert release.wait(60)
        return real_serialise(payload)

    monkeypatch.setattr(ferplus.checkpoint, "serialise", held_serialise)
    with CheckpointWriter() as writer:
        writer.submit([tmp_path / "last.pt"], state)
        assert entered.wait(60)  # submit returned while the save is still in progress
        for tensor in state["model_state"].values():
            tensor.add_(1)  # training goes on meanwhile
        assert not (tmp_path / "last.pt").exists()
        release.set()
    saved = load_checkpoint(tmp_path / "last.pt")["model_state"]  # leaving the block waited for it
    assert all(torch.equal(saved[key], expected[key]) for key in expected)


def test_best_and_last_are_serialised_once(tmp_path, monkeypatch):
    calls = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda *args, **kwargs: (calls.append(1), real_save(*args, **kwargs)))
    with CheckpointWriter() as writer:
        writer.submit([tmp_path / "best.pt", tmp_path / "last.pt"], model_state())
    assert len(calls) == 1
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 3


def test_channels_last_weights_are_digested_without_contiguous_copies(tmp_path, monkeypatch):
    state = model_state(torch.channels_last)
    assert any(not t.is_contiguous() for t in state["model_state"].values())
    expected = content_digest(state)
    copy = ferplus.checkpoint.snapshot(state)  # the host copy a save makes anyway is laid out contiguously
    real_contiguous = torch.Tensor.contiguous

    def no_copies(self, *args, **kwargs):
        assert self.is_contiguous(), "the digest copied a tensor"
        return real_contiguous(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "contiguous", no_copies)
    assert content_digest(copy) == expected  # the same digest, so files of either layout load alike
    monkeypatch.undo()
    with CheckpointWriter() as writer:
        writer.submit([tmp_path / "last.pt"], state)
    assert all(torch.equal(a, b) for a, b in
               zip(load_checkpoint(tmp_path / "last.pt")["model_state"].values(), state["model_state"].values()))


def test_a_failed_background_save_is_raised_at_the_next_save_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "last.pt")
    before = path.read_bytes()
    real_write = Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".last.pt."):
            real_write(self, bytes(data)[: len(data) // 2])  # the disk filled up halfway through
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    writer = CheckpointWriter()
    writer.submit([path], model_state())
    with pytest.raises(OSError) as failed:
        writer.submit([path], model_state())
    assert (failed.value.errno, failed.value.filename) == (errno.ENOSPC, str(path))
    writer.wait()  # reported once
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    writer.submit([path], model_state())
    with pytest.raises(OSError):
        writer.wait()  # at the end of a run too
