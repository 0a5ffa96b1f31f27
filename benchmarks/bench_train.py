"""Training throughput (images/s) of the whole step: batch assembly and augmentation, forward,
backward and the optimiser step, as ``train.py`` runs it, on synthetic uint8 faces of the FER size.

    python benchmarks/bench_train.py                      # vgg13 and vgg13_tiny, batch 32, current device
    python benchmarks/bench_train.py --models vgg13 --batch-size 32 128 --amp --images 32768
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ferplus.data import FerFolder, TrainStream  # noqa: E402
from ferplus.engine import make_optimizer, train_one_epoch  # noqa: E402
from ferplus.runtime import resolve_device  # noqa: E402
from ferplus.labels import NUM_EMOTIONS, NUM_VOTES  # noqa: E402
from ferplus.labels import get_mode  # noqa: E402
from ferplus.models import MODELS, create_model  # noqa: E402
from ferplus.fer_format import IMAGE_SIZE, NUM_TAGGERS  # noqa: E402

MODE = "majority"


def synthetic_folder(num_images: int, seed: int = 0) -> FerFolder:
    """Random uint8 faces with whole-image boxes, each labelled unanimously with a random emotion."""
    rng = np.random.default_rng(seed)
    votes = np.zeros((num_images, NUM_VOTES), dtype=np.int64)
    votes[np.arange(num_images), rng.integers(0, NUM_EMOTIONS, num_images)] = NUM_TAGGERS
    return FerFolder(
        folder=Path("synthetic"),
        names=[f"fer{i:07d}.png" for i in range(num_images)],
        boxes=np.tile(np.array([0, 0, IMAGE_SIZE, IMAGE_SIZE], dtype=np.int64), (num_images, 1)),
        votes=votes,
        images=rng.integers(0, 256, (num_images, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8),
    )


def measure(model_name: str, batch_size: int, data: FerFolder, device: torch.device, amp: bool, epochs: int) -> float:
    """Images/s over ``epochs`` timed epochs, after one untimed warm-up epoch."""
    torch.manual_seed(0)
    model = create_model(model_name).to(device)
    optimizer = make_optimizer(model, lr=0.005, momentum=0.9)
    stream = TrainStream(data, MODE, batch_size, device)
    loss_fn = get_mode(MODE).loss
    train_one_epoch(model, stream, optimizer, loss_fn, 0, amp)
    images = 0
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss_sum, _, count = train_one_epoch(model, stream, optimizer, loss_fn, epoch, amp)
        loss_sum.item()  # wait for the device, as the trainer does once per epoch
        images += count
    return images / (time.perf_counter() - start)


def main() -> None:
    """Print images/s for every requested model and batch size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=["vgg13", "vgg13_tiny"])
    parser.add_argument("--batch-size", nargs="+", type=int, default=[32])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only)")
    parser.add_argument("--images", type=int, default=None, help="images per epoch (default 1024 on CPU, 32768 on CUDA)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    args = parser.parse_args()

    device = resolve_device(args.device)
    num_images = args.images or (32768 if device.type == "cuda" else 1024)
    amp = args.amp and device.type == "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), {num_images} images/epoch, {args.epochs} timed epochs, amp {amp}")
    print(f"{'model':<12} {'batch':>6} {'images/s':>10}")
    data = synthetic_folder(num_images)
    for model_name in args.models:
        for batch_size in args.batch_size:
            rate = measure(model_name, batch_size, data, device, amp, args.epochs)
            print(f"{model_name:<12} {batch_size:>6} {rate:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
