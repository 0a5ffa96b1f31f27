"""Run the project's command lines in-process, as a user runs the top-level scripts from the shell."""

from __future__ import annotations

import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

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
