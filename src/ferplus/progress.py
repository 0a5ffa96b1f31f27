"""Progress within a training epoch: a bar on a terminal, a plain line now and then elsewhere.

The counters are host integers (images seen so far), so showing progress never waits for the
device: a CUDA run keeps queueing steps while a line is written.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Optional, TextIO

#: Seconds between plain progress lines where stderr is not a terminal (logs, batch jobs).
PLAIN_LINE_SECONDS = 60.0
#: Seconds between redraws of the bar on a terminal.
BAR_REFRESH_SECONDS = 0.5
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """A short duration for an ETA: ``40 s``, ``12 min``, ``3.4 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochProgress:
    """Reports the images seen of ``total`` in epoch ``epoch``.

    When stderr is a terminal it redraws one bar line there (cleared at the end). Elsewhere it
    writes a line such as ``epoch 3 41% 11,712/28,558 22 img/s eta 12 min`` to stdout, beside
    the epochs' log lines, at most every ``interval`` seconds (default
    :data:`PLAIN_LINE_SECONDS`, read when the epoch starts); stderr then holds only errors.
    """

    def __init__(self, epoch: int, total: int, interval: Optional[float] = None, done: int = 0) -> None:
        # ``done``: images an earlier session trained in this epoch (a resumed mid-epoch
        # checkpoint); they count towards the share, not towards this session's rate.
        self.epoch, self.total, self.done = epoch, total, done
        self.terminal = sys.stderr.isatty()
        self.stream: TextIO = sys.stderr if self.terminal else sys.stdout
        self.interval = BAR_REFRESH_SECONDS if self.terminal else (PLAIN_LINE_SECONDS if interval is None else interval)
        self.start = self.last = time.monotonic()
        self.drawn = False

    def line(self, images: int, now: float) -> str:
        """The progress text after ``images`` images at time ``now``."""
        elapsed = max(now - self.start, 1e-9)
        rate = (images - self.done) / elapsed
        eta = format_duration((self.total - images) / rate) if rate > 0 else "?"
        share = images / self.total if self.total else 1.0
        text = f"{share:4.0%} {images:,}/{self.total:,} {rate:.0f} img/s eta {eta}"
        if self.terminal:
            filled = round(BAR_WIDTH * share)
            return f"epoch {self.epoch} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"
        return f"epoch {self.epoch} {text.lstrip()}"

    def update(self, images: int) -> None:
        """Note that ``images`` images of the epoch have been trained; writes only when a line is due."""
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        self.last = now
        text = self.line(images, now)
        if self.terminal:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + text[:width].ljust(width))
            self.drawn = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Clear the bar (the epoch's log line follows); plain lines stay."""
        if self.drawn:
            self.stream.write("\r" + " " * (shutil.get_terminal_size().columns - 1) + "\r")
            self.stream.flush()
