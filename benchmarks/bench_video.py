"""Video throughput: predict.py's video path against a straightforward per-frame loop, on one clip.

    python benchmarks/bench_video.py [--model vgg13] [--frames 60] [--size 1280x720]

The clip is made here: matplotlib's sample portrait (Grace Hopper, public domain) moving across
a frame, two copies of it for two faces, written with OpenCV's VideoWriter. Paths, each timed
over the whole clip (read, detect, crop, score), best of ``--repeats`` rounds run in turn:

- ``loop``: every frame read, searched whole at full size, each face scored in its own call;
- ``batched``: ``predict_video`` doing the same work (full search of every frame at full size),
  the faces of 16 frames scored in one call: its per-frame results must equal the loop's;
- ``default``: ``predict_video`` as ``predict.py`` runs it: the search on a copy shrunk to 640
  pixels, whole frames every 5th frame and near the tracked faces in between.

The network is an untrained one of the given architecture: speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Tuple

import cv2
import matplotlib.cbook
import numpy as np
import torch

from ferplus.errors import FerplusError, run_cli
from ferplus.models import create_model
from ferplus.predict.faces import DETECT_MAX_SIDE, crop_faces, detect_faces, face_probabilities, to_gray
from ferplus.predict.tracking import box_iou
from ferplus.predict.video import BATCH_FRAMES, DETECT_EVERY, DETECT_SIDE, FaceFinder, predict_video
from ferplus.scorers import TorchScorer

FPS = 30
Result = List[Tuple[np.ndarray, np.ndarray]]  # per frame: boxes (N, 4), probabilities (N, 8)


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg13", help="architecture (vgg13, vgg13_tiny)")
    parser.add_argument("--frames", type=int, default=60, help="frames in the clip")
    parser.add_argument("--size", default="1280x720", help="frame size WIDTHxHEIGHT")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each path's best is reported")
    return parser


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    """Two copies of the sample portrait drifting across a grey frame."""
    portrait = cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    side = height // 2
    face = cv2.resize(portrait, (side * portrait.shape[1] // portrait.shape[0], side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (width, height))
    if not writer.isOpened():
        raise FerplusError(f"{path}: OpenCV cannot write an MPEG-4 video here")
    travel = width // 2 - face.shape[1]
    for i in range(frames):
        frame = np.full((height, width, 3), 110, dtype=np.uint8)
        shift = i * travel // max(1, frames - 1)
        for x0 in (0, width // 2):
            top = height // 4 + (i % 7) - 3
            frame[top : top + face.shape[0], x0 + shift : x0 + shift + face.shape[1]] = face
        writer.write(frame)
    writer.release()


def per_frame_loop(path: Path, scorer: TorchScorer) -> Result:
    """The straightforward way: read, detect, crop, score each face alone."""
    capture = cv2.VideoCapture(str(path))
    results: Result = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        gray = to_gray(frame)
        boxes = detect_faces(gray)
        crops = crop_faces(gray, boxes)
        probabilities = [face_probabilities(scorer, crop[None])[0] for crop in crops]
        results.append((boxes, np.array(probabilities).reshape(-1, 8)))
    capture.release()
    return results


def pipeline(path: Path, scorer: TorchScorer, finder: FaceFinder) -> Result:
    """``predict_video`` with ``finder``."""
    results: Result = []
    for frame in predict_video(path, scorer, finder, batch_frames=BATCH_FRAMES):
        boxes = np.array([f.box for f in frame.faces], dtype=np.int64).reshape(-1, 4)
        results.append((boxes, np.array([f.probabilities for f in frame.faces]).reshape(-1, 8)))
    return results


def timed(run: Callable[[], Result]) -> Tuple[float, Result]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main(args: argparse.Namespace) -> None:
    """Time the paths in turn and print frames/s side by side, the ratios and how far the results agree."""
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise FerplusError(f"--size {args.size}: give WIDTHxHEIGHT, e.g. 1280x720") from None
    torch.manual_seed(0)
    scorer = TorchScorer(create_model(args.model).eval(), "cpu")
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        make_clip(clip, args.frames, width, height)
        paths = {
            "loop": lambda: per_frame_loop(clip, scorer),
            "batched": lambda: pipeline(clip, scorer, FaceFinder(detect_every=1, detect_side=DETECT_MAX_SIDE)),
            "default": lambda: pipeline(clip, scorer, FaceFinder()),
        }
        pipeline(clip, scorer, FaceFinder())  # warm-up: the cascade's load, the allocator
        best = {name: float("inf") for name in paths}
        results = {}
        for _ in range(args.repeats):
            for name, run in paths.items():
                seconds, results[name] = timed(run)
                best[name] = min(best[name], seconds)

    loop = results["loop"]
    print(f"{args.frames} frames {width}x{height}, 2 faces, {args.model}, cpu, {torch.get_num_threads()} threads")
    print(f"{'path':<10}{'frames/s':>10}{'x loop':>8}  agreement with the loop")
    for name, result in results.items():
        rate = args.frames / best[name]
        print(f"{name:<10}{rate:>10.2f}{best['loop'] / best[name]:>8.2f}  {agreement(loop, result)}")
    print(f"default: search shrunk to {DETECT_SIDE} px, whole frame every {DETECT_EVERY} frames; batches of {BATCH_FRAMES} frames")


def agreement(loop: Result, other: Result) -> str:
    """Same boxes and largest probability difference, or (where the work differs) box overlap and top emotions."""
    if len(loop) != len(other):
        return f"{len(other)} frames against {len(loop)}"
    if all(np.array_equal(a[0], b[0]) for a, b in zip(loop, other)):
        diff = max((np.abs(a[1] - b[1]).max() for a, b in zip(loop, other) if len(a[1])), default=0.0)
        return f"identical boxes, probabilities within {diff:.1e}"
    faces = sum(len(a[0]) for a in loop)
    matched = same_top = 0
    overlaps = []
    for (boxes_a, p_a), (boxes_b, p_b) in zip(loop, other):
        if not len(boxes_a) or not len(boxes_b):
            continue
        iou = box_iou(boxes_a, boxes_b)
        for i in range(len(boxes_a)):
            j = int(np.argmax(iou[i]))
            if iou[i, j] > 0.5:
                matched += 1
                overlaps.append(iou[i, j])
                same_top += int(np.argmax(p_a[i]) == np.argmax(p_b[j]))
    mean_iou = float(np.mean(overlaps)) if overlaps else 0.0
    return f"{matched}/{faces} faces found (mean IoU {mean_iou:.2f}), same top emotion {same_top}/{matched}"


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
