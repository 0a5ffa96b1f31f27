"""Augmentation + preprocessing throughput on one device: batched vs one image at a time.

    python benchmarks/bench_preprocess.py --device cpu
    python benchmarks/bench_preprocess.py --device cuda --images 262144

Both paths call the same ``preprocess(..., augment=True)``; the one-at-a-time path passes one
image per call, as a per-image loader would. Images are random 48x48 faces already on the
device (as :class:`ferplus.data.TrainStream` keeps them), so only the transform is timed.
"""

import argparse
import sys
import time
from typing import Callable

import torch

from ferplus.data import CHUNK_IMAGES
from ferplus.errors import FerplusError, run_cli
from ferplus.fer_format import IMAGE_SIZE
from ferplus.transforms import preprocess

FACE_SIZE = IMAGE_SIZE  # FER faces are 48x48


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--images", type=int, default=4 * CHUNK_IMAGES, help="images for the batched path")
    parser.add_argument("--chunk", type=int, default=CHUNK_IMAGES, help="images per batched call (as TrainStream)")
    parser.add_argument("--single-images", type=int, default=500, help="images for the one-at-a-time path")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; the best is reported")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def best_seconds(run: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed runs, after one untimed warm-up run."""
    times = []
    for attempt in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if attempt:  # the first run warms caches, allocators and kernels
            times.append(time.perf_counter() - start)
    return min(times)


def main(args: argparse.Namespace) -> None:
    """Time both paths and print images/s side by side with their ratio."""
    try:
        device = torch.device(args.device)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as e:
        raise FerplusError(f"--device {args.device}: not usable here ({e})") from None
    if min(args.images, args.chunk, args.single_images, args.repeats) < 1:
        raise FerplusError("--images, --chunk, --single-images and --repeats must be positive")
    generator = torch.Generator(device=device).manual_seed(args.seed)
    images = torch.randint(0, 256, (args.images, FACE_SIZE, FACE_SIZE), dtype=torch.uint8,
                           device=device, generator=generator)
    boxes = torch.tensor([[0, 0, FACE_SIZE, FACE_SIZE]], device=device).expand(args.images, 4)

    def batched() -> None:
        for start in range(0, args.images, args.chunk):
            part = slice(start, start + args.chunk)
            preprocess(images[part], boxes[part], augment=True, generator=generator)

    def one_at_a_time() -> None:
        for i in range(args.single_images):
            preprocess(images[i:i + 1], boxes[i:i + 1], augment=True, generator=generator)

    batched_rate = args.images / best_seconds(batched, device, args.repeats)
    single_rate = args.single_images / best_seconds(one_at_a_time, device, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"augmentation + preprocessing, {FACE_SIZE}x{FACE_SIZE} uint8 -> 1x64x64 float32, on {device} ({name})")
    print(f"{'path':<16}{'images':>10}{'images/s':>12}")
    print(f"{'batched':<16}{args.images:>10}{batched_rate:>12,.0f}   ({args.chunk} per call)")
    print(f"{'one-at-a-time':<16}{args.single_images:>10}{single_rate:>12,.0f}")
    print(f"batched / one-at-a-time: {batched_rate / single_rate:.1f}x")


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
