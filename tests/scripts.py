"""Run the project's top-level scripts in-process, as a user runs them from the shell."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from ferplus.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=None)
def load_script(name: str) -> ModuleType:
    """The module of ``<repo>/<name>.py`` (loaded once), without running its ``__main__`` block."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *argv: object) -> int:
    """Run ``python <name>.py ARGV…`` in-process through ``run_cli``; returns the exit status."""
    module = load_script(name)
    return run_cli(module.main, module.get_args_parser(), [str(a) for a in argv])
