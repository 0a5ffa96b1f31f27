#!/usr/bin/env python3
"""The time an epoch spends outside its training steps: evaluation, checkpoint saves, logging.

    python benchmarks/bench_epoch_overhead.py -d /work/realdata/data --trees /work/base/src src

Each tree (a ``src`` folder holding ``ferplus``) trains the full-width ``vgg13`` in its own
process, ``--steps`` minibatches an "epoch" (the epoch's stream is cut short; everything else
runs as in a real epoch), for ``--epochs`` epochs, the trees taking turns ``--repeats`` times.
From the run's generator (``train_steps``) it times:

``stall``
    from the epoch's last training step to its ``epoch saved`` marker: the totals' sync, the
    validation pass (and the test pass at a new best), the checkpoint saves (or, where they run in
    the background, the host copy the save needs), the log line;
``steps``
    the epoch's training steps (with the first chunk's augmentation), which a background save
    running meanwhile slows down on a small CPU;
``drain``
    from the last ``epoch saved`` to the end of the run minus its plots and results: where the
    pending save is waited for.

``--eval-images`` cuts the validation and test sets (the passes scale linearly with it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    """Train in this process (the tree on ``sys.path``) and return the timings of each epoch."""
    import itertools

    import torch

    import ferplus.data
    import ferplus.engine as engine

    real_epoch, real_batches = ferplus.data.TrainStream.epoch, ferplus.data.EvalSet.batches
    ferplus.data.TrainStream.epoch = lambda self, epoch: itertools.islice(real_epoch(self, epoch), args.steps)

    def batches(self, batch_size, rank=0, world_size=1):
        taken = 0
        for inputs, labels in real_batches(self, batch_size, rank, world_size):
            if args.eval_images and taken >= args.eval_images:
                return
            taken += len(inputs)
            yield inputs, labels

    ferplus.data.EvalSet.batches = batches
    ends = {"plots_and_results": 0.0}
    for name in ("plot_training_curves", "plot_confusion_matrix", "write_json"):
        real = getattr(engine, name)

        def timed(*a, _real=real, **k):
            started = time.perf_counter()
            try:
                return _real(*a, **k)
            finally:
                ends["plots_and_results"] += time.perf_counter() - started

        setattr(engine, name, timed)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = engine.TrainConfig(base_folder=args.data, max_epochs=args.epochs, model="vgg13", device="cpu",
                                    output=str(Path(tmp) / "run"))
        steps = engine.train_steps(config)
        epochs: List[Dict[str, float]] = []
        current = {"steps": 0.0}
        last = last_step = None
        while True:
            try:
                marker = next(steps)
            except StopIteration:
                break
            now = time.perf_counter()
            if marker == engine.STEP:
                if last is not None:  # the first step's interval holds the data loading
                    current["steps"] += now - last
            else:
                current["stall"] = now - last_step
                epochs.append(current)
                current = {"steps": 0.0}
            if marker == engine.STEP:
                last_step = now
            last = now
        drain = time.perf_counter() - last - ends["plots_and_results"]
    return {"epochs": epochs, "drain": drain}


def drive(args: argparse.Namespace) -> None:
    """Measure each tree in turn in a fresh process, ``--repeats`` times, and print a table."""
    rows: Dict[str, List[Dict[str, Any]]] = {tree: [] for tree in args.trees}
    for _ in range(args.repeats):
        for tree in args.trees:
            command = [sys.executable, __file__, "--measure", *sys.argv[1:]]
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{tree}: {done.stderr[-2000:]}")
            rows[tree].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{tree}: {json.dumps(rows[tree][-1])}", flush=True)  # each as it comes: the table may be cut short
    print(f"vgg13, {args.steps} steps an epoch, {args.epochs} epochs, {args.eval_images or 'all'} eval images, "
          f"{args.threads} threads, {args.repeats} repeats; medians in seconds")
    print(f"{'tree':<40}{'stall e0':>10}{'stall e1+':>10}{'steps e1+':>10}{'drain':>8}")
    for tree, runs in rows.items():
        first = [run["epochs"][0]["stall"] for run in runs]
        later = [e["stall"] for run in runs for e in run["epochs"][1:]]
        steps = [e["steps"] for run in runs for e in run["epochs"][1:]]
        drain = [run["drain"] for run in runs]
        print(f"{tree:<40}{statistics.median(first):>10.3f}{statistics.median(later):>10.3f}"
              f"{statistics.median(steps):>10.3f}{statistics.median(drain):>8.3f}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--data", required=True, help="prepared data folder")
    parser.add_argument("--trees", nargs="+", default=["src"], help="src folders to compare")
    parser.add_argument("--steps", type=int, default=4, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--eval-images", type=int, default=0, help="images per evaluation pass (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    parsed = get_args_parser().parse_args()
    if parsed.measure:
        print(json.dumps(measure(parsed)))
    else:
        drive(parsed)
