"""User-facing errors and the command-line wrapper that turns them into one-line messages."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

#: Exit status for problems the user can fix (bad input, bad flags), as argparse uses.
EXIT_USAGE = 2


class FerplusError(Exception):
    """An error the user can act on: shown as a single line, never as a traceback.

    ``exit_code`` is 2 for bad input; failures of a run itself (a diverging loss) use 1.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_cli(
    main: Callable[[argparse.Namespace], object],
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
) -> int:
    """Parse ``argv`` with ``parser``, call ``main(args)`` and return the process exit status.

    A :class:`FerplusError` becomes ``error: <message>`` on stderr and its exit code; an
    ``OSError`` from the file system (a path that cannot be written, say) is reported the same
    way with exit status 2; Ctrl-C exits with 130 without a traceback.
    """
    args = parser.parse_args(argv)
    try:
        main(args)
    except FerplusError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into a reader that stopped early (`| head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        # The file system refused (a file where a folder should be, no permission, disk full):
        # a problem with the paths given, reported like any other bad input.
        where = f"{e.filename}: " if e.filename else ""
        print(f"{parser.prog}: error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    return 0
