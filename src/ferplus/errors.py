"""User-facing errors and the command-line wrapper that turns them into one-line messages."""

from __future__ import annotations

import argparse
import codecs
import errno
import os
import sys
from typing import Callable, Optional, Sequence, Tuple

#: Exit status for problems the user can fix (bad input, bad flags), as argparse uses.
EXIT_USAGE = 2
#: Exit status when the command was right but the run failed: a diverging loss, a full disk,
#: not enough memory.
EXIT_FAILURE = 1
#: File-system errors that mean the disk (or the user's quota) is full.
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
#: What torch's CPU allocator says when an allocation fails.
_CPU_ALLOCATION_FAILED = "DefaultCPUAllocator: can't allocate memory"


class FerplusError(Exception):
    """An error the user can act on: shown as a single line, never as a traceback.

    ``exit_code`` is 2 for bad input; failures of a run itself (a diverging loss) use 1.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the host or the GPU ran out of memory."""
    torch = sys.modules.get("torch")  # only a process that loaded torch can run out of GPU memory
    gpu_error = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    # torch's CPU allocator reports a failed allocation as a plain RuntimeError.
    cpu_error = isinstance(error, RuntimeError) and _CPU_ALLOCATION_FAILED in str(error)
    return isinstance(error, MemoryError) or cpu_error or (gpu_error is not None and isinstance(error, gpu_error))


#: The error handler of stdout and stderr (see :func:`make_output_safe`).
SAFE_ERRORS = "ferplus-escape"


def _escape(error: UnicodeError) -> Tuple[str, int]:
    """``\\xff`` for a byte of a file name that was not text (Python keeps it as a surrogate),
    ``\\xe4`` / ``\\u2212`` for a character the stream's encoding lacks."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    return "".join(
        f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c.encode("ascii", "backslashreplace").decode()
        for c in text
    ), error.end


codecs.register_error(SAFE_ERRORS, _escape)


def make_output_safe() -> None:
    """Let stdout and stderr print any text: characters their encoding lacks (``ä`` under
    ``PYTHONIOENCODING=ascii``) and the undecodable bytes of a file name (``\\xff``) come out
    as backslash escapes instead of raising ``UnicodeEncodeError``.

    A path is printed in nearly every message, so a print that can fail would stop a run before
    its results were written; this is the one place every tool's output goes through.
    """
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)  # None for a replaced stream without it
        if reconfigure is not None:
            reconfigure(errors=SAFE_ERRORS)


def run_cli(
    main: Callable[[argparse.Namespace], object],
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
) -> int:
    """Parse ``argv`` with ``parser``, call ``main(args)`` and return the process exit status.

    A :class:`FerplusError` becomes ``error: <message>`` on stderr and its exit code. An
    ``OSError`` from the file system is reported the same way, naming the path: exit status 1
    for a full disk, 2 for the rest (a path that cannot be written, say). Running out of memory
    is one line and exit status 1. Ctrl-C exits with 130 without a traceback, with the
    interrupted program's advice on going on, if it gave one. Printing never fails on a path
    (see :func:`make_output_safe`).
    """
    make_output_safe()
    args = parser.parse_args(argv)
    try:
        main(args)
    except FerplusError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        advice = f"; {e}" if str(e) else ""
        print(f"{parser.prog}: interrupted{advice}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`| head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # The file system refused (a file where a folder should be, no permission, disk full):
        # a problem with the paths given or with the machine, reported like bad input.
        where = f"{e.filename}: " if e.filename else ""
        print(f"{parser.prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_FAILURE if e.errno in _DISK_FULL else EXIT_USAGE
    except Exception as e:
        if not _out_of_memory(e):
            raise
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"{parser.prog}: error: out of memory ({first_line})", file=sys.stderr)
        return EXIT_FAILURE
    return 0
