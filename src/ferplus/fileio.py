"""Files written whole or not at all, read only when regular, and folders locked to one process."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterable, List, Optional, Tuple, Union

from .errors import FerplusError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

PathLike = Union[str, os.PathLike]

#: Permission bits a new file gets before the umask, as with ``open(path, "w")``.
NEW_FILE_MODE = 0o666
#: atomic_write's temporary files are ``.<name>.<random>.tmp`` beside their target.
_TMP_SUFFIX = ".tmp"
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO then returns at once instead of waiting


def _umask() -> int:
    # The umask can only be read by setting it; read once per write, never at import.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A reader (or a run killed midway) sees either the old file or the new one, never half of one;
    the new file gets the mode ``open()`` would have given it under the process's umask.
    A file-system error while writing (a full disk, say) leaves the old file and no temporary
    one, and is raised as an ``OSError`` that names ``path`` itself. A ``path`` that exists and is
    not a regular file (a folder, a device, a FIFO, a socket) is refused before anything is
    written: renaming over it would replace ``/dev/full`` with a file, say.
    """
    path = Path(path)
    _refuse_special(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, NEW_FILE_MODE & ~_umask())  # mkstemp makes files private; give them the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            # The user knows the file they asked for, not our temporary name (OSError(errno, ...)
            # keeps the subclass: ENOSPC stays an OSError, EACCES a PermissionError).
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


def _refuse_special(path: Path) -> None:
    """Raise ``OSError`` naming ``path`` when it exists and is not a regular file (a link to one is fine)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # a new file, or a parent that is not a folder (mkdir reports that one)
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file to write", str(path))
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "not a regular file: refusing to replace it", str(path))


class InputGuard:
    """Knows the files a tool reads, so that none of them is ever written over: the same file by
    device and inode, so hard links, symbolic links and other spellings of a path count too."""

    def __init__(self, inputs: Iterable[PathLike] = ()) -> None:
        self._files: Dict[Tuple[int, int], PathLike] = {}
        for path in inputs:
            self.add(path)

    def add(self, path: PathLike) -> None:
        """Count ``path`` (if it exists) as an input."""
        with contextlib.suppress(OSError):
            info = os.stat(path)
            self._files.setdefault((info.st_dev, info.st_ino), path)

    def input_at(self, path: PathLike) -> Optional[PathLike]:
        """The input that ``path`` is, or None (also when ``path`` does not exist yet)."""
        try:
            info = os.stat(path)
        except OSError:
            return None
        return self._files.get((info.st_dev, info.st_ino))

    def refuse(self, path: PathLike, flag: str = "") -> None:
        """A one-line :class:`~ferplus.errors.FerplusError` (exit 2) if ``path`` is an input;
        ``flag`` names the option that gave it (e.g. ``--output``)."""
        source = self.input_at(path)
        if source is not None:
            where = f"{flag} " if flag else ""
            raise FerplusError(f"{where}{path}: is the input {source}; write the output to another file")

    def fresh_path(self, path: Path, taken: Collection[Path]) -> Path:
        """``path``, or ``name-2.ext``, ``name-3.ext`` … if it is an input or in ``taken``."""
        candidate, number = path, 1
        while candidate in taken or self.input_at(candidate) is not None:
            number += 1
            candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
        return candidate


def refuse_input(output: PathLike, inputs: Collection[PathLike], flag: str = "") -> None:
    """Raise :class:`~ferplus.errors.FerplusError` when ``output`` is one of ``inputs``
    (:class:`InputGuard`). Every tool calls this before it writes, so that no tool ever writes
    over a file it reads."""
    InputGuard(inputs).refuse(output, flag)


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
