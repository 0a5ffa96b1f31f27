"""``ferplus-predict`` / ``predict.py``: the emotions of the faces in photos, videos and a camera.

Faces are found with OpenCV's frontal-face Haar cascade (or read from ``--boxes``), cropped as
squares, converted to grayscale and preprocessed as in evaluation. For a photo it prints each
face's box (left, top, right, bottom), its eight probabilities and its top emotion; for a video
each track's summary, with every frame's faces in ``--csv`` and ``--json``. Exit status: 0 when
every source gave a prediction, 1 when some could not be read, ended early or had no face (the
others are still reported), 2 for a bad command line, model or ``--boxes`` file.

The parser imports nothing heavy, so that ``--help`` is quick; torch and OpenCV load in ``main``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from ..errors import FerplusError, run_cli
from .common import add_device, make_parser

EXIT_SOME_FAILED = 1


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``predict.py``."""
    parser = make_parser(
        "predict.py",
        "Find faces in photos, videos or a camera and predict their emotions with a checkpoint or an exported .onnx model.",
    )
    parser.add_argument("--model", required=True, help="checkpoint (best.pt) or exported .onnx file")
    parser.add_argument(
        "paths", nargs="*",
        help="photos, videos (.mp4 .avi .mov .mkv .webm ... or anything OpenCV opens), or folders searched recursively",
    )
    parser.add_argument(
        "--camera", type=int, metavar="N", default=None,
        help="also read camera N live: a window where there is a display (q stops), printed lines otherwise; Ctrl-C stops",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--csv", metavar="FILE", default=None, help="write one row per face per frame (or photo) to FILE")
    parser.add_argument(
        "--annotate", metavar="OUT_DIR", default=None,
        help="write each photo and video with boxes, track ids, emotions and probability bars drawn into OUT_DIR",
    )
    parser.add_argument(
        "--timeline", metavar="OUT_DIR", default=None,
        help="write a picture of each video's tracks' probabilities over time into OUT_DIR",
    )
    parser.add_argument(
        "--boxes", metavar="FILE", default=None,
        help="score the face boxes in FILE (CSV: source,frame,x,y,w,h; or JSON) instead of detecting faces",
    )
    parser.add_argument(
        "--no-detect", action="store_true",
        help="treat each whole image or frame as one face crop (e.g. a 48x48 FER image) instead of detecting faces",
    )
    sampling = parser.add_argument_group("videos")
    sampling.add_argument("--every", type=int, default=1, metavar="N", help="score every N-th frame (default: all)")
    sampling.add_argument("--fps", type=float, default=None, metavar="F", help="score at most F frames per second of video")
    sampling.add_argument(
        "--smooth", type=float, default=0.0, metavar="SECONDS",
        help="average each track's probabilities over the last SECONDS (default 0: raw scores)",
    )
    sampling.add_argument(
        "--detect-every", type=int, default=None, metavar="N",
        help="search the whole frame for faces every N scored frames, only near tracked faces in between (default 5)",
    )
    sampling.add_argument(
        "--detect-side", type=int, default=None, metavar="PIXELS",
        help="search frames for faces shrunk to this longer side (default 640)",
    )
    add_device(parser, "cpu", "where a checkpoint runs (.onnx files always run on the CPU)")
    return parser


def has_display() -> bool:
    """Whether a window can be shown: always on Windows and macOS, with an X or Wayland display elsewhere."""
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(args: argparse.Namespace) -> None:
    """Predict, report, and fail with status 1 if any source could not be used."""
    from ..predict.run import PredictOptions, predict_sources  # torch and OpenCV: not needed for --help
    from ..predict.video import DETECT_EVERY, DETECT_SIDE

    if not args.paths and args.camera is None:
        raise FerplusError("give photos, videos or folders to read, or --camera N")
    if args.detect_side is not None and args.detect_side < 1:
        raise FerplusError(f"--detect-side {args.detect_side}: give a positive number of pixels")
    options = PredictOptions(
        detect=not args.no_detect, boxes_file=args.boxes, as_json=args.json, csv_path=args.csv,
        annotate_dir=args.annotate, timeline_dir=args.timeline, every=args.every, fps=args.fps,
        smooth_s=args.smooth, window=has_display(),
        detect_every=DETECT_EVERY if args.detect_every is None else args.detect_every,
        detect_side=DETECT_SIDE if args.detect_side is None else args.detect_side,
    )
    report = predict_sources(args.model, args.paths, options, camera=args.camera, device=args.device)
    failed, total = report.failed, len(report.images) + len(report.videos)
    if failed:
        noun = "videos" if not report.images else "images" if not report.videos else "sources"
        raise FerplusError(f"{failed} of {total} {noun} gave no prediction (see the warnings above)", EXIT_SOME_FAILED)


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), predict, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
