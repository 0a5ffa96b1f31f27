"""``ferplus-evaluate`` / ``evaluate.py``: score a checkpoint or an ONNX export on a prepared split.

Accepts an exported ``.onnx`` model in place of the checkpoint (run with onnxruntime), so
the two can be compared on the same data. Prints accuracy, per-class accuracy and the
confusion matrix; writes ``eval_<model>_<label>_<split>.json`` and ``.png`` beside the model
file, ``<label>`` being the data folder's name unless ``--label`` is given.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..errors import run_cli
from ..fer_format import SPLIT_ALIASES, SPLIT_FOLDERS, canonical_split
from ..settings import EVAL_BATCH_SIZE
from .common import add_data_folder, add_device, make_parser


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``evaluate.py``."""
    parser = make_parser(
        "evaluate.py", "Evaluate a checkpoint or an exported .onnx model on a prepared split (majority labels)."
    )
    parser.add_argument("model", help="checkpoint (best.pt, last.pt) or exported .onnx file")
    add_data_folder(parser)
    parser.add_argument(
        "--split", type=canonical_split, choices=tuple(SPLIT_FOLDERS), default="test",
        help=f"which split to evaluate ({', '.join(f'{a} means {c}' for a, c in SPLIT_ALIASES.items())})",
    )
    parser.add_argument(
        "-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=EVAL_BATCH_SIZE,
        help="images per forward pass",
    )
    add_device(parser, "auto", "where a checkpoint runs (.onnx files always run on the CPU)")
    parser.add_argument(
        "--output", default=None,
        help="folder for eval_<model>_<label>_<split>.json and .png (default: the model file's folder)",
    )
    parser.add_argument(
        "--label", default=None,
        help="name that tells this evaluation's files from others (default: the data folder's name)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    """Evaluate and print the report."""
    from ..evaluation import evaluate_model_file, format_report

    result = evaluate_model_file(
        args.model, args.base_folder, args.split, args.batch_size, args.device, args.output, args.label
    )
    print(format_report(result))


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), evaluate, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
