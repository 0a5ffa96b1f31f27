"""Training throughput side by side on one device: a plain PyTorch loop, this project's eager and fast
steps, and several runs at once; then the projected time of one 100-epoch run and of the paper's table.

Every row trains the same network at the same batch size on the same synthetic uint8 faces of
the FER size, augmented and preprocessed as it goes, and is timed over one epoch after one
untimed epoch (which holds set-up: data upload, cuDNN autotuning, CUDA-graph capture)::

    python benchmarks/bench_train.py                         # current device, vgg13, batch 32
    python benchmarks/bench_train.py --device cuda --jobs 1 4 8 16
    python benchmarks/bench_train.py --device cpu --steps 3 --threads 1
"""

import argparse
import contextlib
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ferplus.data import FerFolder, TrainStream
from ferplus.engine import EPOCH_SAVED, make_optimizer, train_one_epoch
from ferplus.hardware import configure_cuda, cpu_has_native_bf16, use_bf16
from ferplus.fer_format import IMAGE_SIZE, NUM_EMOTIONS, NUM_TAGGERS, NUM_VOTES
from ferplus.labels import get_mode
from ferplus.models import MODELS, create_model
from ferplus.multirun import InterleavedRun
from ferplus.runtime import resolve_device
from ferplus.step import make_step
from ferplus.transforms import preprocess

MODE = "majority"
EPOCHS = 100
#: Training images per epoch of the real FER+ data (28,558 training images), per mode.
REAL_TRAIN_IMAGES = {"majority": 25_057, "probability": 27_953, "crossentropy": 27_953, "multi_target": 27_668}
TABLE_SEEDS = 5


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


def plain_loop(model_name: str, data: FerFolder, device: torch.device, batch_size: int) -> Iterator[str]:
    """The loop a user would write: fp32, default layout, per-batch augmentation, optimizer.step()."""
    torch.manual_seed(0)
    model = create_model(model_name).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    images, boxes = torch.from_numpy(data.images).to(device), torch.from_numpy(data.boxes).to(device)
    targets = torch.eye(NUM_EMOTIONS, device=device)[torch.from_numpy(data.votes[:, :NUM_EMOTIONS].argmax(1)).to(device)]
    while True:
        order = torch.randperm(len(images), device=device)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(preprocess(images[index], boxes[index], augment=True)), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            yield "step"
        yield EPOCH_SAVED


def project_run(
    model_name: str, data: FerFolder, device: torch.device, batch_size: int, kind: str, amp: bool,
    channels_last: bool, seed: int = 0,
) -> Iterator[str]:
    """This project's training path (TrainStream and the engine's epoch loop) with one kind of step."""
    torch.manual_seed(seed)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(model_name).to(device, memory_format=memory_format)
    optimizer = make_optimizer(model, lr=0.005, momentum=0.9)
    step = make_step(kind, model, model, optimizer, get_mode(MODE).loss, batch_size, amp, channels_last)
    stream = TrainStream(data, MODE, batch_size, device, seed=seed)
    epoch = 0
    while True:
        yield from train_one_epoch(step, stream, epoch)
        epoch += 1
        yield EPOCH_SAVED


class Direct:
    """A generator advanced as it is, on the current stream (what one run of train.py does)."""

    def __init__(self, steps: Iterator[str]) -> None:
        self.steps = steps

    def advance(self) -> str:
        return next(self.steps)


def run_epoch(runs: List) -> int:
    """Advance every run round-robin through one epoch; returns the steps taken in total."""
    steps, running = 0, list(runs)
    while running:
        for run in list(running):
            if run.advance() == EPOCH_SAVED:
                running.remove(run)
            else:
                steps += 1
    return steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(make_runs: Callable[[], List], device: torch.device, batch_size: int) -> tuple:
    """``(images/s, wall ms per step of one run, CPU ms per step)`` over one timed epoch after one
    untimed epoch. The CPU time of this process (all its threads) shows the work done on the host:
    the arithmetic on a CPU, kernel launches and Python on a GPU; on a busy shared machine it is
    also steadier than the wall time."""
    runs = make_runs()
    run_epoch(runs)
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    steps = run_epoch(runs)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return steps * batch_size / seconds, 1000 * seconds / (steps / len(runs)), 1000 * cpu_seconds / steps


class OverBudget(Exception):
    """A row ran past its own time budget."""


@contextlib.contextmanager
def time_budget(seconds: Optional[float]) -> Iterator[None]:
    """Raise :class:`OverBudget` in the block once ``seconds`` have passed (None: no limit; POSIX only)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise OverBudget(f"over its own budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def row_line(label: str, figures: tuple, base: Optional[float]) -> str:
    rate, ms, cpu_ms = figures
    ratio = f"{rate / base:8.2f}" if base else f"{'':>8}"
    return f"{label:<52} {rate:10.0f} {ms:9.2f} {ratio} {cpu_ms:12.2f}"


def main() -> None:
    """Print each row as it is measured, then the side-by-side table and the projections."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model", choices=tuple(MODELS), default="vgg13")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="steps per timed epoch (default 256 on CUDA, 3 on CPU)")
    parser.add_argument("--jobs", type=int, nargs="*", default=None, help="runs at once (default 1 4 8 16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--no-compiled", action="store_true", help="skip the torch.compile row (slow to compile)")
    parser.add_argument(
        "--compiled-seconds", type=float, default=120,
        help="the compiled row's own time budget, compiling included (default 120; 0: none)",
    )
    parser.add_argument(
        "--repeat", type=int, default=None,
        help="measure every row this many times, in turn, and keep the fastest (default 1 on CUDA, 2 on CPU)",
    )
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        configure_cuda()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (256 if cuda else 3)
    jobs = args.jobs if args.jobs is not None else ([1, 4, 8, 16] if cuda else [])
    data = synthetic_folder(steps * args.batch_size)
    bf16 = use_bf16(device, None)
    if cuda:
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads, native bf16: {'yes' if cpu_has_native_bf16() else 'no'}"
    print(f"device {device} ({name}); torch {torch.__version__}; {args.model}, batch {args.batch_size}, "
          f"{steps} steps per timed epoch")
    default = "graph" if cuda else "eager"
    print(f"train.py's default here: {default} step, {'bf16 autocast' if bf16 else 'fp32'}, channels_last")

    # (label, what makes its runs, its own time budget in seconds or None)
    rows = [(
        "plain loop: fp32, per-batch augmentation",
        lambda: [Direct(plain_loop(args.model, data, device, args.batch_size))], None,
    )]
    settings = [("eager", False, False), ("eager", False, True), ("eager", True, False), ("eager", True, True)]
    if cuda:
        settings = [("eager", True, True), ("graph", False, True), ("graph", True, True)]
    for kind, amp, channels_last in settings:
        label = f"{kind} step: {'bf16' if amp else 'fp32'}{', channels_last' if channels_last else ''}"
        if (kind, amp, channels_last) == (default, bf16, True):
            label += "  <- train.py"
        rows.append((label, lambda kind=kind, amp=amp, cl=channels_last: [
            Direct(project_run(args.model, data, device, args.batch_size, kind, amp, cl))
        ], None))
    for k in jobs:
        rows.append((f"{k} runs at once: {default} step, {'bf16' if bf16 else 'fp32'}", lambda k=k: [
            InterleavedRun(project_run(args.model, data, device, args.batch_size, default, bf16, True, seed=s), device)
            for s in range(k)
        ], None))
    if cuda and not args.no_compiled:  # last, with its own budget: compiling takes a while
        rows.append(("compiled step: bf16, channels_last", lambda: [
            Direct(project_run(args.model, data, device, args.batch_size, "compiled", True, True))
        ], args.compiled_seconds or None))

    # Rows are measured in turn, round after round, so that a busy spell of a shared machine does
    # not fall on one row alone; each keeps its fastest round. Each measurement is printed at
    # once, so that a run cut short still shows what it measured.
    header = f"{'setting':<52} {'images/s':>10} {'ms/step':>9} {'x plain':>8} {'CPU ms/step':>12}"
    print(f"\n{header}", flush=True)
    best, failed = {}, {}
    for _ in range(args.repeat or (1 if cuda else 2)):
        for label, make_runs, budget in rows:
            if label in failed:
                continue
            try:
                with time_budget(budget):
                    figures = measure(make_runs, device, args.batch_size)
            except Exception as e:  # one failing setting (a compiler missing, say) must not hide the others
                failed[label] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if not isinstance(e, OverBudget):
                    traceback.print_exc(file=sys.stderr)
                print(f"{label:<52} {failed[label]}", flush=True)
                continue
            print(row_line(label, figures, best.get(rows[0][0], (None,))[0]), flush=True)
            if label not in best or figures[0] > best[label][0]:
                best[label] = figures
            if cuda:
                torch.cuda.empty_cache()

    print(f"\nfastest of each row:\n{header}")
    base = best.get(rows[0][0], (None,))[0]
    for label, _, _ in rows:
        if label in failed:
            print(f"{label:<52} {failed[label]}")
            continue
        print(row_line(label, best[label], base))
    if not jobs:
        print("(runs at once not measured: a CPU computes rather than waits, so they share it; --jobs K measures them)")
    rates = {label: figures[0] for label, figures in best.items()}

    default_rate = next((r for label, r in rates.items() if label.endswith("<- train.py")), None)
    if default_rate is None:
        return
    together = max([r for label, r in rates.items() if "runs at once" in label] + [default_rate])
    table_images = TABLE_SEEDS * sum(REAL_TRAIN_IMAGES.values()) * EPOCHS
    print("\nprojected on the real data, training steps only (evaluation and checkpoints add to it):")
    for mode in ("majority", "probability"):
        images = REAL_TRAIN_IMAGES[mode] * EPOCHS
        print(f"  one {mode} run, {REAL_TRAIN_IMAGES[mode]:,} images x {EPOCHS} epochs: "
              f"{images / default_rate:8.0f} s with train.py's default step")
    print(f"  the {TABLE_SEEDS * len(REAL_TRAIN_IMAGES)}-run table, {table_images / 1e6:.1f} M images: "
          f"{table_images / together / 60:8.1f} min at the best rate above ({together:.0f} images/s)")


if __name__ == "__main__":
    main()
