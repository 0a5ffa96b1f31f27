"""Checkpoints: written atomically, read back with clear errors, and turned into ready models."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from .errors import FerplusError
from .fileio import atomic_write
from .models import create_model

FORMAT = "ferplus-checkpoint-1"
#: What a checkpoint (and an ONNX export's metadata) says about its network.
INFO_KEYS = ("model", "mode", "epoch")

PathLike = Union[str, os.PathLike]


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


def describe(state: Dict[str, Any]) -> Dict[str, Any]:
    """What a checkpoint says about its network: ``model``, ``mode`` and ``epoch`` (as train.log numbers it), where recorded."""
    return {key: state[key] for key in INFO_KEYS if key in state}


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
