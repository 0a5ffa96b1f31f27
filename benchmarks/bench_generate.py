#!/usr/bin/env python3
"""Time ``generate_training_data`` against a straightforward per-row loop on the full FER2013 file.

    python benchmarks/bench_generate.py                     # rebuilds fer2013.csv from ../shared/ferplus
    python benchmarks/bench_generate.py --fer fer2013.csv --ferplus data/fer2013new.csv

The straightforward loop is what one writes first: ``csv.reader`` over the rows,
``np.asarray(row.split(), dtype=np.uint8).reshape(48, 48)``, ``PIL.Image.save`` per row, and the
label.csv lines. Both run in the same process one after the other (alternating which goes first), each into a
fresh folder, and the script prints both wall times and their ratio per round, then the median
ratio (the target is at most 0.4). Everything is
written under a temporary folder that is deleted afterwards; nothing lands in the repository.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ferplus.prepare import (  # noqa: E402
    FACE_BOX,
    IMAGE_SIZE,
    LABEL_FILE,
    USAGE_FOLDERS,
    format_summary,
    generate_training_data,
)

DEFAULT_SHARED = ROOT.parent / "shared" / "ferplus"
TARGET_RATIO = 0.4


def straightforward_loop(base: Path, fer_path: Path, ferplus_path: Path) -> int:
    """The plain per-row conversion the fast path is measured against; returns images written."""
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
            Image.fromarray(image).save(base / USAGE_FOLDERS[usage] / name)
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
    parser.add_argument("--repeat", type=int, default=1, help="timed rounds (each times both, side by side)")
    return parser


def main(args: argparse.Namespace) -> None:
    """Build the input if needed, then time both conversions and print the figures."""
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        tmp = Path(tmp)
        fer, ferplus = args.fer, args.ferplus or args.shared / "fer2013new.csv"
        if fer is None:
            fer = tmp / "fer2013.csv"
            print(f"building {fer} from {args.shared} ...", flush=True)
            subprocess.run([sys.executable, str(args.shared / "make_fer2013_csv.py"), str(fer)], check=True)
        print(f"input: {fer} ({fer.stat().st_size / 1e6:.0f} MB), {ferplus}; {os.cpu_count()} CPUs")
        ratios = []
        for round_ in range(args.repeat):
            # Alternate which runs first: the second run of a round finds the page cache warmer.
            order = ("loop", "fast") if round_ % 2 == 0 else ("fast", "loop")
            seconds = {}
            for which in order:
                out = tmp / f"{which}{round_}"
                start = time.perf_counter()
                if which == "loop":
                    images = straightforward_loop(out, fer, ferplus)
                else:
                    summary = generate_training_data(out, fer, ferplus, progress=False)
                seconds[which] = time.perf_counter() - start
            ratios.append(seconds["fast"] / seconds["loop"])
            fast_images = sum(s["images"] for s in summary.values())
            print(f"round {round_ + 1} ({' then '.join(order)}):")
            print(f"  straightforward loop    {seconds['loop']:6.2f} s ({images} images)")
            print(f"  generate_training_data  {seconds['fast']:6.2f} s ({fast_images} images)")
            print(f"  ratio {ratios[-1]:.3f}")
        # Outputs are deleted only at the end: deleting ~70k files keeps the disk busy for a while.
        median = float(np.median(ratios))
        verdict = "meets" if median <= TARGET_RATIO else "MISSES"
        print(f"median ratio over {len(ratios)} round(s): {median:.3f} ({verdict} the target <= {TARGET_RATIO})")
        print(format_summary(summary))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
