"""Writing files so that a reader, or a run killed midway, never sees half of one."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Union

PathLike = Union[str, os.PathLike]

#: Permission bits a new file gets before the umask, as with ``open(path, "w")``.
NEW_FILE_MODE = 0o666


def _umask() -> int:
    # The umask can only be read by setting it; read once per write, never at import.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A reader (or a run killed midway) sees either the old file or the new one, never half of one.
    The new file gets the mode ``open()`` would have given it under the process's umask.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, NEW_FILE_MODE & ~_umask())  # mkstemp makes files private
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
