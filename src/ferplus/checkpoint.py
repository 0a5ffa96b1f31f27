"""Checkpoints and the files of a run: written atomically, read back with clear errors, and
turned into ready models; run folders locked to one process.

A checkpoint records a SHA-256 digest of its contents, checked on every load, so a file damaged
on disk or in transfer is refused instead of scored.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import pickle
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .errors import FerplusError
from .models import create_model

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

#: Version 2 records the digest of its contents (version 1 files are refused as foreign).
FORMAT = "ferplus-checkpoint-2"
DIGEST_KEY = "sha256"
#: What every checkpoint holds besides its format and digest; the trainer adds more.
REQUIRED_KEYS = ("model", "mode", "model_state")

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: What ``open(path, "w")`` would give a new file under the process's umask.
_DEFAULT_FILE_MODE = 0o666 & ~_umask()
#: atomic_write's temporary files are ``.<name>.<random>.tmp`` beside their target.
_TMP_SUFFIX = ".tmp"
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO then returns at once instead of waiting


def atomic_write(path: PathLike, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A reader (or a run killed midway) sees either the old file or the new one, never half of one.
    A file-system error while writing (a full disk, say) leaves the old file and no temporary
    one, and is raised as an ``OSError`` that names ``path`` itself.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, _DEFAULT_FILE_MODE)  # mkstemp makes files private; give them the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            # The user knows the file they asked for, not our temporary name (OSError(errno, ...)
            # keeps the subclass: ENOSPC stays an OSError, EACCES a PermissionError).
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def remove_stale_temporaries(folder: PathLike, names: Collection[str]) -> None:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` for the files ``names``
    when a process was killed while writing.

    Only call this while no other process can be writing there (a locked run folder).
    """
    # tempfile's random part is lower-case letters, digits and underscores.
    pattern = re.compile(
        "|".join(re.escape(f".{name}.") + r"[a-z0-9_]+" + re.escape(_TMP_SUFFIX) for name in names)
    )
    for path in Path(folder).iterdir():
        if pattern.fullmatch(path.name) and path.is_file():
            path.unlink()


def read_regular_file(path: PathLike) -> bytes:
    """The bytes of ``path``, which must be a regular file.

    Anything else raises ``OSError``: reading a FIFO or a device would wait forever or never end.
    """
    fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_BINARY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


class FolderLock:
    """An exclusive lock on a folder, held by one process at a time (a lock file inside it).

    The operating system drops the lock when its process ends, however it ends, so the lock of a
    killed process is simply taken over. A folder this lock created is removed again on
    :meth:`release` if nothing else was written into it.
    """

    FILE = ".lock"

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self._fd: Optional[int] = None
        self._created: List[Path] = []

    def acquire(self) -> bool:
        """Take the lock (creating the folder if needed); False when another process holds it."""
        while True:
            for parent in reversed((self.folder, *self.folder.parents)):
                if not parent.exists():
                    parent.mkdir(exist_ok=True)
                    self._created.append(parent)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except FileNotFoundError:  # the folder was just removed by a process that let go of it
                continue
            if not _try_lock(fd):
                os.close(fd)
                return False
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                self._fd = fd
                return True
            os.close(fd)  # we locked a lock file its last holder removed: lock the one there now

    def release(self) -> None:
        """Let go of the lock, first removing what :meth:`acquire` created if it holds nothing else."""
        if self._fd is None:
            return
        if self._created and [p.name for p in self.folder.iterdir()] == [self.FILE]:
            self.path.unlink()  # before unlocking: whoever opens it next finds it gone and retries
            for folder in reversed(self._created):
                try:
                    folder.rmdir()
                except OSError:  # another process has started to use it meanwhile
                    break
        os.close(self._fd)
        self._fd = None
        self._created = []


def _try_lock(fd: int) -> bool:
    """Lock the open file ``fd`` exclusively without waiting; False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except (BlockingIOError, PermissionError):  # msvcrt reports a held lock as EACCES
        return False
    return True


# An innermost list of numbers, as json.dumps(indent=2) spreads it over lines.
_NUMBER_LIST = re.compile(r"\[\s+(-?[\d.eE+-]+(?:,\s+-?[\d.eE+-]+)*)\s+\]")


def write_json(path: PathLike, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically; lists of numbers (confusion-matrix rows,
    say) stay on one line each so that the file reads as a table."""
    text = json.dumps(payload, indent=2)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text + "\n"))


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


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """Save a checkpoint dict atomically, with the digest of its contents.

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
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getbuffer()))


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
    if not isinstance(state["model_state"], dict):
        raise FerplusError(f"{path}: not a usable checkpoint: its model_state is not a state dict")
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
