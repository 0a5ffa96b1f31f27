"""run_cli: user-facing failures become one line on stderr and an exit status, never a traceback."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

import pytest
import torch

from ferplus.errors import FerplusError, run_cli
from ferplus.synthetic import write_sample
from scripts import run_script


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="tool.py")


def _raising(error: BaseException):
    def main(args: argparse.Namespace) -> None:
        raise error

    return main


@pytest.mark.parametrize(
    "error, status, message",
    [
        (FerplusError("data.csv: line 3: bad vote"), 2, "tool.py: error: data.csv: line 3: bad vote"),
        (FerplusError("epoch 4: loss is nan", exit_code=1), 1, "tool.py: error: epoch 4: loss is nan"),
        (PermissionError(13, "Permission denied", "/out/run"), 2, "tool.py: error: /out/run: Permission denied"),
        (KeyboardInterrupt(), 130, "tool.py: interrupted"),
        (KeyboardInterrupt("continue with --resume"), 130, "tool.py: interrupted; continue with --resume"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/last.pt"),
            1,
            "tool.py: error: /out/last.pt: No space left on device",
        ),
        (MemoryError(), 1, "tool.py: error: out of memory (MemoryError)"),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nSee the documentation"),
            1,
            "tool.py: error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB.)",
        ),
    ],
)
def test_failures_are_one_line(error, status, message, capsys):
    assert run_cli(_raising(error), _parser(), []) == status
    captured = capsys.readouterr()
    assert captured.err == message + "\n" and captured.out == ""


def test_success_is_zero():
    assert run_cli(lambda args: None, _parser(), []) == 0


def test_programming_errors_still_raise():
    with pytest.raises(ZeroDivisionError):
        run_cli(_raising(ZeroDivisionError()), _parser(), [])


def test_output_folder_that_is_a_file(tmp_path: Path, capsys):
    """A script whose output path is blocked by a file says so in one line and writes nothing."""
    fer, ferplus = write_sample(tmp_path / "csv", per_split=20)
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    assert run_script("generate_training_data", "-d", blocker, "-fer", fer, "-ferplus", ferplus, "--quiet") == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"generate_training_data.py: error: {blocker}: File exists"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csv", "data"] and blocker.read_text() == "not a folder"
