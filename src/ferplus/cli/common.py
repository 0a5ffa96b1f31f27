"""What the command lines share: flags spelled the same everywhere, and help that shows defaults.

Nothing here (nor in any parser) imports torch: ``--help`` and flag errors answer at once, and
each tool imports the package's heavy modules inside its ``main``.
"""

from __future__ import annotations

import argparse
from typing import Any, Optional, Sequence, Set

from ..settings import DEVICES


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and ``(default: …)`` after every option that has a default worth showing."""

    def _get_help_string(self, action: argparse.Action) -> Optional[str]:
        # None and False defaults mean "not given" (switches, derived values): the help says what happens then.
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of one tool, formatted like every other tool's."""
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)


def add_data_folder(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    """``-d/--base-folder`` (also the reference trainer's ``--base_folder``): the prepared data folder."""
    options = {"required": True, "help": "folder holding FER2013Train/ FER2013Valid/ FER2013Test/", **kwargs}
    parser.add_argument("-d", "--base-folder", "--base_folder", dest="base_folder", **options)


def add_device(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """``--device auto|cpu|cuda``."""
    parser.add_argument("--device", choices=DEVICES, default=default, help=help)


def given_flags(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> Set[str]:
    """The destinations of the flags that ``argv`` gives, as opposed to those left at their defaults."""
    unset = object()
    # argparse fills in a default only where the namespace lacks the attribute, so a namespace
    # preset to a marker keeps the marker exactly where a flag was not given.
    every = vars(parser.parse_args(argv))
    probe = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(every, unset)))
    return {dest for dest, value in vars(probe).items() if value is not unset}
