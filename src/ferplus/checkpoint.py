"""Checkpoints: written atomically, read back with clear errors, and turned into ready models."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from .errors import FerplusError
from .models import create_model

FORMAT = "ferplus-checkpoint-1"

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: What ``open(path, "w")`` would give a new file under the process's umask.
_DEFAULT_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: PathLike, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A reader (or a run killed midway) sees either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _DEFAULT_FILE_MODE)  # mkstemp makes files private; give them the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# An innermost list of numbers, as json.dumps(indent=2) spreads it over lines.
_NUMBER_LIST = re.compile(r"\[\s+(-?[\d.eE+-]+(?:,\s+-?[\d.eE+-]+)*)\s+\]")


def write_json(path: PathLike, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically; lists of numbers (confusion-matrix rows,
    say) stay on one line each so that the file reads as a table."""
    text = json.dumps(payload, indent=2)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Save a checkpoint dict atomically.

    ``state`` must hold ``model`` (registry name), ``mode`` and ``model_state`` (a state dict);
    the trainer adds the epoch, optimiser state, history and resolved configuration.
    """
    for key in ("model", "mode", "model_state"):
        if key not in state:
            raise KeyError(f"checkpoint state lacks {key!r}")
    payload = {"format": FORMAT, **state}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or foreign file is a :class:`FerplusError`."""
    path = Path(path)
    if not path.is_file():
        raise FerplusError(f"{path}: no such checkpoint file")
    try:
        # weights_only: a checkpoint is tensors and plain data, so loading one never runs code.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise FerplusError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FerplusError(f"{path}: not a FER+ checkpoint (expected format {FORMAT})")
    return state


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """Build the checkpoint's model with its weights, in eval mode on ``device``; returns ``(model, checkpoint)``."""
    state = load_checkpoint(path)
    try:
        model = create_model(state["model"])
    except ValueError as e:
        raise FerplusError(f"{path}: {e}") from None
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as e:  # weights that do not fit the named model
        raise FerplusError(f"{path}: weights do not fit model {state['model']} ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), state
