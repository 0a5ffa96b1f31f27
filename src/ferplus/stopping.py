"""Stopping a run at a step boundary: SIGTERM and SIGINT become a request that training reads.

``kill``, SLURM and Kubernetes send SIGTERM; Ctrl-C sends SIGINT. Either one, arriving while a
run trains (:func:`training`), is only recorded here: the run finishes its current step, saves a
resumable checkpoint and stops (:func:`requested` says which signal asked). Outside training
(reading the data, writing the results) the signals act as they would without this module.
A second Ctrl-C during training interrupts at once, as Ctrl-C does elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Dict, Iterator, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: Optional[int] = None
_training = 0  # runs of this process inside their epoch loop
_previous: Dict[int, Any] = {}  # the handlers ours replaced, while ours are installed


def requested() -> Optional[int]:
    """The signal that asked the runs of this process to stop, or None."""
    return _requested


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGINT``."""
    return signal.Signals(signum).name


def _handle(signum: int, frame: Any) -> None:
    global _requested
    if _training and (_requested is None or signum != signal.SIGINT):
        _requested = _requested or signum
        return
    # Not training, or Ctrl-C pressed twice: what the signal did before this module took it.
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within this block, SIGTERM and SIGINT during training ask the runs to stop at their next step.

    Only the main thread can take signals, so elsewhere (and when already installed) this does nothing.
    """
    global _requested
    if _previous or threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested = None
    for signum in STOP_SIGNALS:
        _previous[signum] = signal.signal(signum, _handle)
    try:
        yield
    finally:
        for signum, handler in _previous.items():
            signal.signal(signum, handler)
        _previous.clear()
        _requested = None


@contextlib.contextmanager
def training() -> Iterator[None]:
    """Mark a run's epoch loop, where a stop signal is deferred to the next step boundary."""
    global _training
    _training += 1
    try:
        yield
    finally:
        _training -= 1
