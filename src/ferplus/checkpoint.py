"""Checkpoints: written atomically with a digest of their contents, read back with clear errors,
and turned into ready models.

A checkpoint records a SHA-256 digest of its contents, checked on every load, so a file damaged
on disk or in transfer is refused instead of scored. The trainer writes its checkpoints on a
background thread (:class:`CheckpointWriter`) from a host copy of the state, so that training
goes on while they are serialised, digested and written.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from .errors import FerplusError
from .fileio import atomic_write
from .models import create_model

#: Version 2 records the digest of its contents (version 1 files are refused as foreign).
FORMAT = "ferplus-checkpoint-2"
DIGEST_KEY = "sha256"
#: What every checkpoint holds besides its format and digest; the trainer adds more.
REQUIRED_KEYS = ("model", "mode", "model_state")
#: What a checkpoint (and an ONNX export's metadata) says about its network.
INFO_KEYS = ("model", "mode", "epoch")
#: Fields of the epoch records in ``history`` that are always finite numbers (``test_accuracy`` is
#: one only at new best validation epochs, else None).
HISTORY_NUMBERS = (
    "epoch", "train_loss", "train_accuracy", "val_accuracy", "lr", "seconds", "train_seconds", "train_images",
)

PathLike = Union[str, os.PathLike]


def content_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a checkpoint's contents: every key and value but the digest itself,
    tensors by dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    _hash_value(digest, {key: value for key, value in state.items() if key != DIGEST_KEY})
    return digest.hexdigest()


def _hash_value(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _hash_value(digest, key)
            _hash_value(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__} {len(value)};".encode())
        for item in value:
            _hash_value(digest, item)
    elif value is None or isinstance(value, (bool, int, float, str)):
        digest.update(f"{type(value).__name__} {value!r};".encode())  # repr: exact for floats, quoted strings
    else:
        raise TypeError(f"a checkpoint holds tensors and plain data, not {type(value).__name__}")


def snapshot(state: Any) -> Any:
    """A copy of ``state`` that later training cannot change: every tensor copied to the host
    (contiguous, so that the digest reads it as it lies), dicts and lists copied."""
    if isinstance(state, torch.Tensor):
        # One copy, device to host or host to host; channels_last weights become contiguous in it.
        return state.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
    if isinstance(state, dict):
        return {key: snapshot(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(value) for value in state)
    return state


def serialise(state: Dict[str, Any]) -> memoryview:
    """The bytes of a checkpoint of ``state``: its format, contents and digest.

    ``state`` must hold ``model`` (registry name), ``mode`` and ``model_state`` (a state dict);
    the trainer adds the epoch, optimiser state, history and resolved configuration.
    """
    for key in REQUIRED_KEYS:
        if key not in state:
            raise KeyError(f"checkpoint state lacks {key!r}")
    payload = {"format": FORMAT, **state}
    payload[DIGEST_KEY] = content_digest(payload)
    # Serialised in memory, then written as plain bytes: a full disk then surfaces as the
    # OSError it is, which torch.save would turn into a RuntimeError.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getbuffer()


def write_bytes(paths: Sequence[PathLike], data: memoryview) -> None:
    """Write ``data`` to each of ``paths`` in turn, each atomically."""
    for path in paths:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Save a checkpoint dict atomically, with the digest of its contents (see :func:`serialise`)."""
    write_bytes([path], serialise(state))


class CheckpointWriter:
    """Saves checkpoints on a background thread, one at a time, in the order given.

    :meth:`submit` takes a host copy of the state (the only part the caller waits for) and
    returns; the copy is serialised once and written to each of its paths atomically, so a kill
    at any instant leaves every earlier file whole. A failed write (a full disk) is raised by
    the next :meth:`submit` or :meth:`wait`; leaving the ``with`` block waits for the last one.
    """

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, paths: Sequence[PathLike], state: Dict[str, Any]) -> None:
        """Save ``state`` to every one of ``paths`` (the same bytes), in the background."""
        self.wait()  # one save in flight at most: memory stays bounded and errors surface in order
        copy = snapshot(state)
        self._thread = threading.Thread(target=self._save, args=(list(paths), copy), name="checkpoint writer")
        self._thread.start()

    def _save(self, paths: Sequence[PathLike], state: Dict[str, Any]) -> None:
        try:
            write_bytes(paths, serialise(state))
        except BaseException as e:  # raised in the training thread, which can act on it
            self._error = e

    def wait(self) -> None:
        """Block until the save in flight is on disk; raise its error if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> "CheckpointWriter":
        return self

    def __exit__(
        self, kind: Optional[Type[BaseException]], error: Optional[BaseException], trace: Optional[TracebackType]
    ) -> None:
        if kind is None:
            self.wait()
        elif self._thread is not None:  # already failing: finish the save, report the first error
            self._thread.join()


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and check its digest.

    A missing, foreign or damaged file is a :class:`FerplusError` naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise FerplusError(f"{path}: is a folder; pass a checkpoint file in it (such as {path / 'best.pt'})")
    if not path.is_file():
        raise FerplusError(f"{path}: no such checkpoint file")
    try:
        # weights_only: a checkpoint is tensors and plain data, so loading one never runs code.
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # what weights_only refuses
        raise FerplusError(
            f"{path}: refused: it holds Python objects other than tensors and plain data, which could run code"
        ) from None
    except Exception:  # a damaged archive fails in many ways, none of them more telling than this
        raise FerplusError(f"{path}: not a readable checkpoint (damaged, truncated or not a PyTorch file)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FerplusError(f"{path}: not a FER+ checkpoint (expected format {FORMAT})")
    try:
        intact = state.get(DIGEST_KEY) == content_digest(state)
    except TypeError:  # a type save_checkpoint never writes
        intact = False
    if not intact:
        raise FerplusError(f"{path}: damaged: its contents do not match the digest recorded in it")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise FerplusError(f"{path}: not a usable checkpoint: it lacks {', '.join(missing)}")
    problem = _schema_problem(state)
    if problem:
        raise FerplusError(f"{path}: not a usable checkpoint: {problem}")
    return state


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _history_problem(history: Any) -> Optional[str]:
    if not isinstance(history, list):
        return "its history is not a list of epochs"
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            return f"its history[{i}] is not an epoch record"
        for key in HISTORY_NUMBERS:
            if not _is_number(record.get(key)):
                return f"its history[{i}] {key} {_short(record.get(key))} is not a finite number"
        if record.get("test_accuracy") is not None and not _is_number(record["test_accuracy"]):
            return f"its history[{i}] test_accuracy {_short(record['test_accuracy'])} is not a finite number"
    return None


def _confusion_problem(matrix: Any) -> Optional[str]:
    rows_ok = isinstance(matrix, list) and all(
        isinstance(row, list) and len(row) == len(matrix) and all(_is_int(n) and n >= 0 for n in row) for row in matrix
    )
    return None if rows_ok else "its test_confusion is not a square table of counts"


def _model_state_problem(model_state: Any) -> Optional[str]:
    if not isinstance(model_state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model_state.items()
    ):
        return "its model_state is not a state dict (names to tensors)"
    for key, tensor in model_state.items():
        # NaN or infinite weights score every image as NaN: such a model is broken, not usable.
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"its model_state {key} holds non-finite weights (NaN or infinity)"
    return None


def _checker(test: Callable[[Any], bool], what: str) -> Callable[[str, Any], Optional[str]]:
    return lambda key, value: None if test(value) else f"its {key} {_short(value)} is not {what}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: What each field holds, where present: a file whose digest is right may still have been made by
#: another program, and a field of the wrong type would surface later as a traceback.
SCHEMA: Dict[str, Callable[[str, Any], Optional[str]]] = {
    "model": _checker(lambda v: isinstance(v, str), "a model name"),
    "mode": _checker(lambda v: isinstance(v, str), "a training mode"),
    "model_state": lambda key, value: _model_state_problem(value),
    "epoch": _checker(lambda v: _is_int(v) and v >= 0, "an epoch number"),
    "config": _checker(lambda v: isinstance(v, dict), "a configuration (a dict)"),
    "optimizer_state": _checker(lambda v: isinstance(v, dict), "an optimiser state (a dict)"),
    "history": lambda key, value: _history_problem(value),
    "best_val_accuracy": _checker(lambda v: _is_number(v) and v <= 1, "an accuracy"),
    "best_epoch": _checker(lambda v: v is None or (_is_int(v) and v >= 0), "an epoch number"),
    "test_accuracy": _checker(lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "an accuracy"),
    "test_confusion": lambda key, value: None if value is None else _confusion_problem(value),
}


def _schema_problem(state: Mapping[str, Any]) -> Optional[str]:
    """What in a checkpoint's fields is not of the type the trainer writes (naming the field), or None."""
    for key, check in SCHEMA.items():
        if key in state:
            problem = check(key, state[key])
            if problem:
                return problem
    return None


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
