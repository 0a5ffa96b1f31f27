"""``--boxes FILE``: face boxes from another detector, scored instead of detected.

A CSV with a header row holding at least ``source``, ``x``, ``y``, ``w`` and ``h`` (``frame``
too for videos: the frame number from 0; empty or absent for photos), so that a ``--csv`` output
reads back as it is; or a JSON list of ``{"source": ..., "frame": ..., "box": [x, y, w, h]}``.
Sources are matched to the paths given on the command line as the same file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import FerplusError
from ..fileio import read_regular_file

PathLike = Union[str, os.PathLike]
CSV_REQUIRED = ("source", "x", "y", "w", "h")


class GivenBoxes:
    """The boxes of a ``--boxes`` file, by source file and frame (0 for a photo)."""

    def __init__(self, path: PathLike) -> None:
        """Read ``path``; :class:`FerplusError` (exit 2) naming the file and the entry if anything is malformed."""
        self.path = path
        try:
            text = read_regular_file(path).decode("utf-8-sig")
        except FileNotFoundError:
            raise FerplusError(f"--boxes {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise FerplusError(f"--boxes {path}: cannot be read ({getattr(e, 'strerror', None) or e})") from None
        entries = self._json(text) if text.lstrip().startswith(("[", "{")) else self._csv(text)
        self._boxes: Dict[str, Dict[int, List[Tuple[int, int, int, int]]]] = defaultdict(lambda: defaultdict(list))
        for where, source, frame, box in entries:
            try:
                self._boxes[_key(source)][_frame(frame)].append(_box(box))
            except ValueError as e:
                raise self._fail(where, str(e)) from None

    def _fail(self, where: str, problem: str) -> FerplusError:
        return FerplusError(f"--boxes {self.path}: {where}: {problem}")

    def _csv(self, text: str) -> Iterator[Tuple[str, str, Any, List[Any]]]:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in CSV_REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise self._fail("header", f"needs the columns {', '.join(CSV_REQUIRED)} (missing {', '.join(missing)})")
        for line, row in enumerate(reader, 2):
            yield f"line {line}", row["source"], row.get("frame"), [row[c] for c in ("x", "y", "w", "h")]

    def _json(self, text: str) -> Iterator[Tuple[str, str, Any, List[Any]]]:
        try:
            entries = json.loads(text)
        except ValueError as e:
            raise self._fail("JSON", str(e)) from None
        if not isinstance(entries, list):
            raise self._fail("JSON", "expected a list of {source, frame, box: [x, y, w, h]}")
        for number, entry in enumerate(entries):
            where = f"entry {number}"
            if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or "box" not in entry:
                raise self._fail(where, "expected {source, frame, box: [x, y, w, h]}")
            yield where, entry["source"], entry.get("frame"), entry["box"]

    def for_source(self, source: PathLike) -> Optional[Dict[int, np.ndarray]]:
        """Frame number → int64 boxes ``(N, 4)`` (left, top, right, bottom) for ``source``; None if the file names none."""
        frames = self._boxes.get(_key(source))
        if frames is None:
            return None
        return {frame: np.array([(x, y, x + w, y + h) for x, y, w, h in boxes], dtype=np.int64) for frame, boxes in frames.items()}


def _key(source: PathLike) -> str:
    return os.path.realpath(source)


def _frame(value: Any) -> int:
    """A frame number from a CSV cell or a JSON value (empty or absent: 0, a photo's one frame)."""
    if value in (None, ""):
        return 0
    try:
        frame = int(value)
    except (TypeError, ValueError):
        frame = -1
    if isinstance(value, bool) or frame < 0:
        raise ValueError(f"frame {value!r} is not a frame number (0, 1, 2, ...)")
    return frame


def _box(values: Any) -> Tuple[int, int, int, int]:
    """``(x, y, w, h)`` in whole pixels from four numbers."""
    try:
        x, y, w, h = (int(float(v)) for v in values)
        valid = w > 0 and h > 0
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise ValueError(f"box {values!r} is not x, y, w, h with a positive width and height")
    return x, y, w, h
