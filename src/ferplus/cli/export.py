"""``ferplus-export`` / ``export_onnx.py``: a checkpoint to ONNX, ``RUN/best.pt model.onnx``.

The file has the ONNX Model Zoo "emotion-ferplus" interface: input ``Input3`` float32
``(N, 1, 64, 64)`` preprocessed crops (dynamic N), output ``Plus692_Output_0`` ``(N, 8)``
raw scores in the order neutral, happiness, surprise, sadness, anger, disgust, fear, contempt.
It is checked with the ONNX checker and compared with PyTorch before it is written.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..errors import FerplusError, run_cli
from ..settings import DEFAULT_VERIFY_BATCH, MAX_VERIFY_BATCH
from .common import make_parser


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``export_onnx.py``."""
    parser = make_parser(
        "export_onnx.py", "Export a checkpoint to ONNX (Model Zoo emotion-ferplus interface), checked with onnxruntime."
    )
    parser.add_argument("checkpoint", help="checkpoint to export (best.pt, last.pt)")
    parser.add_argument("output", help="the .onnx file to write")
    parser.add_argument(
        "--verify-batch", "--verify_batch", dest="verify_batch", type=int, default=DEFAULT_VERIFY_BATCH,
        help=f"crops compared between PyTorch and onnxruntime (at most {MAX_VERIFY_BATCH})",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    """Export, verify and report."""
    if not 1 <= args.verify_batch <= MAX_VERIFY_BATCH:
        raise FerplusError(f"--verify-batch {args.verify_batch}: compare between 1 and {MAX_VERIFY_BATCH} crops")
    from ..checkpoint import describe, load_model
    from ..fileio import refuse_input
    from ..onnx_export import MAX_ABS_DIFF, export_onnx
    from ..scorers import INPUT_NAME, OUTPUT_NAME

    refuse_input(args.output, [args.checkpoint])
    model, state = load_model(args.checkpoint, "cpu")
    result = export_onnx(model, args.output, verify_batch=args.verify_batch, metadata=describe(state))
    print(f"wrote {args.output}: input {INPUT_NAME} float32 [N, 1, 64, 64], output {OUTPUT_NAME} [N, 8] raw scores")
    print(
        f"verified with onnxruntime on {result['verify_batch']} crops: "
        f"max abs difference to PyTorch {result['max_abs_diff']:.3g} (limit {MAX_ABS_DIFF:g})"
    )


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), export, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
