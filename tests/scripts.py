"""Run the project's command lines in-process, as a user runs the top-level scripts from the shell."""

from __future__ import annotations

import importlib
import os
import types
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
#: Seconds one test may run before the watchdog in conftest.py stops the whole run with every
#: thread's traceback and exit status 1: the suite's one guard against a hang. Generous, so that
#: a slow machine never trips it; the tests themselves block and poll without deadlines.
TEST_TIME_LIMIT = float(os.environ.get("FERPLUS_TEST_TIME_LIMIT", 3600))
#: Images per split of the ``small_data`` fixture: four minibatches of 32 and a smaller last one.
SMALL_SPLIT_IMAGES = 150

#: Top-level script → the module of ``ferplus.cli`` that holds its command line.
SCRIPT_MODULES = {
    "train": "train",
    "generate_training_data": "generate",
    "evaluate": "evaluate",
    "predict": "predict",
    "export_onnx": "export",
    "reproduce": "reproduce",
    "export_labels": "export_labels",
}


def run_script(name: str, *argv: object) -> int:
    """Run ``python <name>.py ARGV…`` in-process; returns the exit status."""
    return importlib.import_module(f"ferplus.cli.{SCRIPT_MODULES[name]}").run([str(a) for a in argv])


def write_split(folder: Path, images, votes, names: Optional[Sequence[str]] = None) -> List[str]:
    """A prepared split folder as the generator writes one: ``images[i]`` (uint8 (H, W)) as a PNG
    and a label.csv line with its whole-image box and ``votes[i]`` (ten counts). Returns the names."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    names = list(names) if names is not None else [f"fer{i:07d}.png" for i in range(len(images))]
    lines = []
    for name, image, counts in zip(names, images, votes):
        assert cv2.imwrite(str(folder / name), image)
        height, width = image.shape
        lines.append(f'{name},"(0, 0, {width}, {height})",' + ",".join(str(int(c)) for c in counts))
    (folder / "label.csv").write_text("\n".join(lines) + "\n")
    return names


def copy_split_head(source: Path, target: Path, count: int) -> None:
    """Copy the first ``count`` images of the prepared split ``source`` (label.csv order) to ``target``."""
    lines = (source / "label.csv").read_text().splitlines()[:count]
    target.mkdir(parents=True)
    (target / "label.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        name = line.split(",", 1)[0]
        (target / name).write_bytes((source / name).read_bytes())


def write_model_files(folder: Path, model, mode: str = "majority", epoch: int = 0) -> Dict[str, Path]:
    """Save ``model`` (a vgg13_tiny) in ``folder`` as a checkpoint ``best.pt`` and its ONNX export
    ``model.onnx``; returns ``{"checkpoint", "onnx"}``."""
    from ferplus.checkpoint import save_checkpoint
    from ferplus.onnx_export import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    info = {"model": "vgg13_tiny", "mode": mode, "epoch": epoch}
    save_checkpoint(folder / "best.pt", {**info, "model_state": model.state_dict()})
    export_onnx(model, folder / "model.onnx", metadata=info)
    return {"checkpoint": folder / "best.pt", "onnx": folder / "model.onnx"}


#: Every write to this device fails with ENOSPC, as on a full disk.
DEV_FULL = Path("/dev/full")


def fill_disk_for(monkeypatch, *names: str) -> None:
    """Make the atomic writes of the files called ``names`` meet a full disk: their temporary
    file is a link to /dev/full, so the real write fails with the kernel's own ENOSPC, whatever
    writes it (open, Path.write_bytes, a PNG encoder). Skips the test without /dev/full."""
    import pytest
    import tempfile

    from ferplus import fileio

    if not DEV_FULL.exists():
        pytest.skip("needs /dev/full")

    def mkstemp(prefix: str, suffix: str, dir: str):
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)
        if any(prefix == f".{name}." for name in names):
            os.unlink(tmp)
            os.symlink(DEV_FULL, tmp)
        return fd, tmp

    monkeypatch.setattr(fileio, "tempfile", types.SimpleNamespace(mkstemp=mkstemp))
