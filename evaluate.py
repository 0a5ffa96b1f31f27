"""Evaluate a trained network on a prepared split: ``python evaluate.py RUN/best.pt -d DATA``.

Accepts an exported ``.onnx`` model in place of the checkpoint (run with onnxruntime), so
the two can be compared on the same data. Prints accuracy, per-class accuracy and the
confusion matrix; writes ``eval_<split>.json`` and ``confusion_<split>.png``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

import argparse  # noqa: E402

from ferplus.data import SPLIT_FOLDERS  # noqa: E402
from ferplus.engine import EVAL_BATCH_SIZE  # noqa: E402
from ferplus.errors import run_cli  # noqa: E402
from ferplus.evaluation import evaluate_model_file, format_report  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``evaluate.py``."""
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate a checkpoint or an exported .onnx model on a prepared split (majority labels).",
    )
    parser.add_argument("model", help="checkpoint (best.pt, last.pt) or exported .onnx file")
    parser.add_argument("-d", "--base_folder", required=True, help="folder holding FER2013Train/Valid/Test")
    parser.add_argument("--split", choices=tuple(SPLIT_FOLDERS), default="test", help="which split to evaluate")
    parser.add_argument("-b", "--batch-size", type=int, default=EVAL_BATCH_SIZE, help="images per forward pass")
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="where a checkpoint runs (.onnx files always run on the CPU)",
    )
    parser.add_argument(
        "--output", default=None,
        help="folder for eval_<split>.json and confusion_<split>.png (default: the model file's folder)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    """Evaluate and print the report."""
    result = evaluate_model_file(args.model, args.base_folder, args.split, args.batch_size, args.device, args.output)
    print(format_report(result))


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
