"""``ferplus-labels`` / ``export_labels.py``: the FER+ labels of a prepared data folder, for other tools.

    python export_labels.py -d data --csv labels                  # labels/ferplus_{train,val,test}.csv
    python export_labels.py -d data --imagefolder ferplus_folders # ferplus_folders/<split>/<emotion>/*.png

The CSVs hold, per image, the ten votes, the majority label and every mode's target
distribution and keep flag (columns: see ferplus/label_export.py or the README). The
ImageFolder tree holds the majority-labelled images as hard links to the prepared PNGs (symbolic
links or copies where hard links fail), for torchvision.datasets.ImageFolder and the like.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..errors import run_cli
from ..fer_format import SPLIT_FOLDERS
from .common import add_data_folder, make_parser


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``export_labels.py``."""
    parser = make_parser("export_labels.py", __doc__)
    add_data_folder(parser)
    parser.add_argument("--csv", type=Path, help="folder that receives ferplus_<split>.csv (created if needed)")
    parser.add_argument("--imagefolder", type=Path, help="folder to build the ImageFolder tree in (new or empty)")
    parser.add_argument(
        "--splits", nargs="+", default=list(SPLIT_FOLDERS), metavar="SPLIT",
        help=f"splits to export, of {', '.join(SPLIT_FOLDERS)} (valid is read as val; default: all)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing CSVs and a non-empty --imagefolder")
    return parser


def main(args: argparse.Namespace) -> None:
    """Export as the parsed arguments say and print what was written."""
    from ..label_export import export_labels, format_export_summary

    summary = export_labels(args.base_folder, args.csv, args.imagefolder, args.splits, args.overwrite)
    print(f"wrote {', '.join(str(path) for path in summary.written)}")
    print(format_export_summary(summary))


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), export, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
