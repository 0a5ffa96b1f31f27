#!/usr/bin/env python3
"""Time a run's data loading (``train.py -e 0`` past its imports) against a plain ``cv2.imread`` loop.

    python benchmarks/bench_load.py -d /tmp/realdata_new                       # this checkout only
    python benchmarks/bench_load.py -d /tmp/realdata_new --base /work/base/src --repeat 3

The data folder should come from this checkout's generator (so that its splits hold packs):
``python generate_training_data.py -d /tmp/realdata_new -fer fer2013.csv``. Each round runs, in
a rotating order and each in a fresh process whose imports are done before the clock starts:

* ``imread loop``: ``cv2.imread(path, cv2.IMREAD_GRAYSCALE)`` of every PNG that the three
  ``label.csv`` files list, nothing else (the floor a PNG reader cannot beat);
* ``now``: this checkout's ``train.py -d DATA -e 0 --device cpu`` (read the three splits, put the
  training images on the device, preprocess the evaluation sets, print the class table);
* ``base`` (with ``--base SRC``): the same command run from another source tree, e.g. the commit
  before the packs;
* ``now, reading`` and ``base, reading``: only the three ``ferplus.data.read_folder`` calls of
  that command (what the packs speed up; the rest is putting the images on the device and
  preprocessing the evaluation sets once).

It prints the seconds and the ratio to the imread loop per round, then the medians; the target
for ``now`` is at most 0.5. The page cache is warm after the first round: the figures compare
warm reads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.5
SPLITS = ("FER2013Train", "FER2013Valid", "FER2013Test")

# Each child imports first, then prints the seconds of the timed part alone.
IMREAD_LOOP = r"""
import sys, time, cv2
base = sys.argv[1]
start = time.perf_counter()
for split in %r:
    folder = f"{base}/{split}"
    with open(f"{folder}/label.csv") as f:
        for line in f:
            if line.strip():
                assert cv2.imread(f"{folder}/{line.split(',', 1)[0]}", cv2.IMREAD_GRAYSCALE) is not None
print(time.perf_counter() - start)
""" % (SPLITS,)

TRAIN_E0 = r"""
import contextlib, io, sys, time
import ferplus.data, ferplus.engine  # torch and the toolkit, imported before the clock starts
from ferplus.cli import train
start = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    code = train.run(["-d", sys.argv[1], "-e", "0", "--device", "cpu"])
assert code == 0, code
print(time.perf_counter() - start)
"""


READ_ONLY = r"""
import sys, time
from ferplus.data import read_folder
start = time.perf_counter()
for split in %r:
    read_folder(f"{sys.argv[1]}/{split}")
print(time.perf_counter() - start)
""" % (SPLITS,)


def timed(script: str, data: Path, src: Path) -> float:
    """Seconds of the timed part of ``script`` run in a fresh process with ``src`` on its path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", script, str(data)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{script.splitlines()[1]}...: exit {done.returncode}\n{done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def main(args: argparse.Namespace) -> None:
    runs = {"imread loop": (IMREAD_LOOP, ROOT / "src"), "now": (TRAIN_E0, ROOT / "src")}
    runs["now, reading"] = (READ_ONLY, ROOT / "src")
    if args.base is not None:
        runs["base"] = (TRAIN_E0, args.base)
        runs["base, reading"] = (READ_ONLY, args.base)
    names = list(runs)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeat):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for name in order:
            script, src = runs[name]
            seconds[name].append(timed(script, args.data, src))
        loop = seconds["imread loop"][-1]
        row = ", ".join(f"{name} {seconds[name][-1]:.2f} s ({seconds[name][-1] / loop:.2f}x)" for name in names)
        print(f"round {round_ + 1} ({' then '.join(order)}): {row}", flush=True)
    loop = statistics.median(seconds["imread loop"])
    print("median: " + ", ".join(
        f"{name} {statistics.median(s):.2f} s ({statistics.median(s) / loop:.2f}x the imread loop)"
        for name, s in seconds.items()
    ))
    ratio = statistics.median(n / l for n, l in zip(seconds["now"], seconds["imread loop"]))
    print(f"now / imread loop, median of the rounds' ratios: {ratio:.2f} (target <= {TARGET_RATIO})")


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of the data loading benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--data", type=Path, required=True,
                        help="a data folder made by this checkout's generator")
    parser.add_argument("--base", type=Path, help="src/ folder of another checkout to time the same way")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (default: 3)")
    return parser


if __name__ == "__main__":
    main(get_args_parser().parse_args())
