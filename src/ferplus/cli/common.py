"""Flags that several command lines share, spelled the same everywhere."""

from __future__ import annotations

import argparse
from typing import Any

DEVICES = ("auto", "cpu", "cuda")


def add_data_folder(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
    """``-d/--base-folder`` (also the reference trainer's ``--base_folder``): the prepared data folder."""
    options = {"required": True, "help": "folder holding FER2013Train/ FER2013Valid/ FER2013Test/", **kwargs}
    parser.add_argument("-d", "--base-folder", "--base_folder", dest="base_folder", **options)


def add_device(parser: argparse.ArgumentParser, default: str, help: str) -> None:
    """``--device auto|cpu|cuda``."""
    parser.add_argument("--device", choices=DEVICES, default=default, help=help)
