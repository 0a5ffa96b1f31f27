"""``ferplus-predict`` / ``predict.py``: the emotions of the faces in pictures.

Faces are found with OpenCV's frontal-face Haar cascade, cropped as squares, converted to
grayscale and preprocessed as in evaluation. Per face it prints the box (left, top, right,
bottom), the eight probabilities and the top emotion. Exit status: 0 when every image was
read and had a face, 1 when some could not be read or had no face (the others are still
reported), 2 for a bad command line or model file.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..errors import FerplusError, run_cli
from .common import add_device, make_parser

EXIT_SOME_FAILED = 1


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``predict.py``."""
    parser = make_parser(
        "predict.py", "Find faces in images and predict their emotions with a checkpoint or an exported .onnx model."
    )
    parser.add_argument("--model", required=True, help="checkpoint (best.pt) or exported .onnx file")
    parser.add_argument("paths", nargs="+", help="image files, or folders searched recursively for images")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument(
        "--annotate", metavar="OUT_DIR", default=None, help="write each image with boxes and labels drawn into OUT_DIR"
    )
    parser.add_argument(
        "--no-detect", action="store_true",
        help="treat each whole image as one face crop (e.g. a 48x48 FER image) instead of detecting faces",
    )
    add_device(parser, "cpu", "where a checkpoint runs (.onnx files always run on the CPU)")
    return parser


def main(args: argparse.Namespace) -> None:
    """Predict, report, and fail with status 1 if any image could not be used."""
    from ..inference import predict_images

    results = predict_images(
        args.model, args.paths, device=args.device, detect=not args.no_detect,
        as_json=args.json, annotate_dir=args.annotate,
    )
    failed = sum(r.error is not None for r in results)
    if failed:
        message = f"{failed} of {len(results)} images gave no prediction (see the warnings above)"
        raise FerplusError(message, EXIT_SOME_FAILED)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), predict, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
