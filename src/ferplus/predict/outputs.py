"""What prediction reports: per-face results, CSV rows, per-track summaries, and output files that
never replace an input and are never left half-written.
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, TextIO, Tuple, Union

import numpy as np

from ..fer_format import EMOTIONS, NUM_EMOTIONS

PathLike = Union[str, os.PathLike]

#: The columns of ``--csv``: one row per face per frame (photos leave frame, time_s and track empty).
CSV_COLUMNS = ("source", "frame", "time_s", "track", "x", "y", "w", "h", *EMOTIONS, "emotion")
#: Digits kept in the CSV: probabilities to 1e-6, times to the microsecond.
CSV_DIGITS = 6


@dataclass
class FacePrediction:
    """One face: its box (left, top, right, bottom) in image pixels, the emotion probabilities and,
    in a video, its track id."""

    box: Tuple[int, int, int, int]
    probabilities: np.ndarray  # (8,) in EMOTIONS order
    track: Optional[int] = None

    @property
    def emotion(self) -> str:
        """The most probable emotion."""
        return EMOTIONS[int(np.argmax(self.probabilities))]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        out: Dict[str, Any] = {} if self.track is None else {"track": self.track}
        out.update(
            box=dict(zip(("left", "top", "right", "bottom"), (int(v) for v in self.box))),
            emotion=self.emotion,
            probabilities={name: float(p) for name, p in zip(EMOTIONS, self.probabilities)},
        )
        return out


def csv_rows(
    source: PathLike, faces: Iterable[FacePrediction], frame: Optional[int] = None, time_s: Optional[float] = None
) -> Iterator[List[Any]]:
    """The ``--csv`` rows (:data:`CSV_COLUMNS`) of one photo's or one frame's faces."""
    for face in faces:
        left, top, right, bottom = face.box
        yield [
            str(source), "" if frame is None else frame, "" if time_s is None else round(time_s, CSV_DIGITS),
            "" if face.track is None else face.track, left, top, right - left, bottom - top,
            *(round(float(p), CSV_DIGITS) for p in face.probabilities), face.emotion,
        ]


@dataclass
class TrackSummary:
    """One track over a video, built frame by frame: when it was seen and what it showed."""

    track: int
    first_s: float
    last_s: float = 0.0
    frames: int = 0
    #: Frames in which each emotion was the top one, in EMOTIONS order.
    top_counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_EMOTIONS, dtype=np.int64))

    def add(self, time_s: float, face: FacePrediction) -> None:
        """Count one sampled frame of this track."""
        self.last_s = time_s
        self.frames += 1
        self.top_counts[int(np.argmax(face.probabilities))] += 1

    @property
    def dominant(self) -> str:
        """The emotion that was on top in most of the track's frames."""
        return EMOTIONS[int(np.argmax(self.top_counts))]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form: times in seconds, and each emotion's share of the track's frames."""
        return {
            "track": self.track,
            "first_s": round(self.first_s, CSV_DIGITS),
            "last_s": round(self.last_s, CSV_DIGITS),
            "duration_s": round(self.last_s - self.first_s, CSV_DIGITS),
            "frames": self.frames,
            "dominant": self.dominant,
            "share": {name: float(n / self.frames) for name, n in zip(EMOTIONS, self.top_counts)},
        }

    def describe(self) -> str:
        """One readable line."""
        shares = "  ".join(
            f"{name} {100 * n / self.frames:.0f}%" for name, n in zip(EMOTIONS, self.top_counts) if n
        )
        return (
            f"  track {self.track}: {self.first_s:.2f}-{self.last_s:.2f} s ({self.frames} frames), "
            f"mostly {self.dominant}; {shares}"
        )


@contextlib.contextmanager
def staged_output(path: PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, so writers that go by it still can), renamed
    to ``path`` when the block ends normally and deleted when it raises: the file appears whole or
    not at all, however long it takes to write (a streamed CSV or video)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename in (None, tmp):
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise


class CsvOutput:
    """``--csv FILE``: rows streamed to a staged file as results come, renamed into place at the end."""

    def __init__(self, stack: contextlib.ExitStack, path: PathLike) -> None:
        tmp = stack.enter_context(staged_output(path))
        self._file: TextIO = stack.enter_context(open(tmp, "w", newline=""))
        self._writer = csv.writer(self._file)
        self._writer.writerow(CSV_COLUMNS)

    def write(self, rows: Iterable[List[Any]]) -> None:
        """Append rows (from :func:`csv_rows`)."""
        self._writer.writerows(rows)
