#!/usr/bin/env python3
"""Time ``generate_training_data`` against a straightforward per-row loop on the full FER2013 file.

    python benchmarks/bench_generate.py                     # rebuilds fer2013.csv from ../shared/ferplus
    python benchmarks/bench_generate.py --fer fer2013.csv --ferplus data/fer2013new.csv --repeat 3

The straightforward loop is what one writes first: ``csv.reader`` over the rows,
``np.asarray(row.split(), dtype=np.uint8).reshape(48, 48)``, ``PIL.Image.save`` per row, and the
label.csv lines. It runs twice per round: at the generator's PNG compression level
(:data:`~ferplus.prepare.PNG_COMPRESSION`), so that the ratio measures the code and not the
compression, and at Pillow's default level 6 as a loop written without thought of the level would.
The three runs of a round go in a rotating order in the same process, each into a fresh folder;
the script prints the wall times and both ratios per round, then their medians (the target for
the same-level ratio is at most 0.4). Everything is written under a temporary folder that is
deleted afterwards; nothing lands in the repository.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ferplus.fer_format import FACE_BOX, IMAGE_SIZE, LABEL_FILE, USAGE_FOLDERS
from ferplus.prepare import PNG_COMPRESSION, auto_workers, format_summary, generate_training_data

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SHARED = ROOT.parent / "shared" / "ferplus"
TARGET_RATIO = 0.4
PILLOW_DEFAULT_LEVEL = 6
#: The loop's runs of a round: name -> zlib level of its PNGs.
LOOPS = {"loop, same level": PNG_COMPRESSION, f"loop, level {PILLOW_DEFAULT_LEVEL}": PILLOW_DEFAULT_LEVEL}
GENERATOR = "generate_training_data"


def straightforward_loop(base: Path, fer_path: Path, ferplus_path: Path, level: int) -> int:
    """The plain per-row conversion, PNGs at zlib ``level``; returns the number of images written."""
    with open(ferplus_path, newline="") as f:
        label_rows = list(csv.reader(f))[1:]
    label_files = {}
    for usage, folder in USAGE_FOLDERS.items():
        (base / folder).mkdir(parents=True)
        label_files[usage] = open(base / folder / LABEL_FILE, "w", newline="")
    box = '"(' + ", ".join(map(str, FACE_BOX)) + ')"'
    written = 0
    with open(fer_path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for (_, pixels, usage), label in zip(reader, label_rows):
            name = label[1]
            if not name:
                continue
            image = np.asarray(pixels.split(), dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
            Image.fromarray(image).save(base / USAGE_FOLDERS[usage] / name, compress_level=level)
            label_files[usage].write(f"{name},{box},{','.join(label[2:])}\n")
            written += 1
    for f in label_files.values():
        f.close()
    return written


def get_args_parser() -> argparse.ArgumentParser:
    """Command-line flags of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fer", type=Path, help="a full fer2013.csv (default: rebuilt from --shared)")
    parser.add_argument("--ferplus", type=Path, help="fer2013new.csv (default: the one in --shared)")
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="folder with make_fer2013_csv.py")
    parser.add_argument("--repeat", type=int, default=1, help="timed rounds (each times all three, side by side)")
    return parser


def main(args: argparse.Namespace) -> None:
    """Build the input if needed, then time the conversions and print the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        tmp = Path(tmp)
        fer, ferplus = args.fer, args.ferplus or args.shared / "fer2013new.csv"
        if fer is None:
            fer = tmp / "fer2013.csv"
            print(f"building {fer} from {args.shared} ...", flush=True)
            subprocess.run([sys.executable, str(args.shared / "make_fer2013_csv.py"), str(fer)], check=True)
        print(f"input: {fer} ({fer.stat().st_size / 1e6:.0f} MB), {ferplus}; {os.cpu_count()} CPUs")
        names = (*LOOPS, GENERATOR)
        ratios: dict[str, list[float]] = {loop: [] for loop in LOOPS}
        for round_ in range(args.repeat):
            # Rotate the order: a later run of a round finds the page cache warmer.
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            seconds, images = {}, {}
            for which in order:
                out = tmp / f"{which.replace(' ', '_').replace(',', '')}{round_}"
                start = time.perf_counter()
                if which == GENERATOR:
                    # The pool, as the CLI uses it (library calls parse in-process by default).
                    summary = generate_training_data(out, fer, ferplus, progress=False, workers=auto_workers(fer))
                    images[which] = sum(s["images"] for s in summary.values())
                else:
                    images[which] = straightforward_loop(out, fer, ferplus, LOOPS[which])
                seconds[which] = time.perf_counter() - start
            print(f"round {round_ + 1} ({' then '.join(order)}):")
            for which in names:
                print(f"  {which:<24}{seconds[which]:6.2f} s ({images[which]} images)")
            for loop in LOOPS:
                ratios[loop].append(seconds[GENERATOR] / seconds[loop])
                print(f"  ratio to {loop:<17}{ratios[loop][-1]:.3f}")
        # Outputs are deleted only at the end: deleting ~100k files keeps the disk busy for a while.
        for loop, values in ratios.items():
            median = float(np.median(values))
            verdict = ""
            if LOOPS[loop] == PNG_COMPRESSION:
                verdict = f" ({'meets' if median <= TARGET_RATIO else 'MISSES'} the target <= {TARGET_RATIO})"
            print(f"median ratio to the {loop} over {len(values)} round(s): {median:.3f}{verdict}")
        print(format_summary(summary))

if __name__ == "__main__":
    main(get_args_parser().parse_args())
