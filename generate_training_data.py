#!/usr/bin/env python3
"""Write the FER2013Train/ FER2013Valid/ FER2013Test/ folders (PNGs + label.csv) that train.py reads.

    python generate_training_data.py -d data -fer fer2013.csv              # real data
    python generate_training_data.py -d data                               # a synthetic sample

fer2013.csv comes from Kaggle ("Challenges in Representation Learning: Facial Expression
Recognition Challenge"); the FER+ votes (fer2013new.csv) ship in this repository's data/.
Without -fer, a small synthetic sample (procedurally drawn faces, not FER2013) is written to
<base_folder>/synthetic/ and prepared instead, so that the tools can be tried end to end.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

import argparse  # noqa: E402

from ferplus.errors import FerplusError, run_cli  # noqa: E402
from ferplus.prepare import format_summary, generate_training_data  # noqa: E402
from ferplus.synthetic import write_sample  # noqa: E402

DEFAULT_FERPLUS = Path(__file__).resolve().parent / "data" / "fer2013new.csv"
SYNTHETIC_FOLDER = "synthetic"


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of generate_training_data.py (the names the reference FER+ tools use)."""
    parser = argparse.ArgumentParser(
        prog="generate_training_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-d", "--base_folder", type=Path, default=Path("data"),
                        help="folder that receives FER2013Train/ FER2013Valid/ FER2013Test/ (default: data)")
    parser.add_argument("-fer", "--fer_path", type=Path,
                        help="the Kaggle fer2013.csv; without it a synthetic sample is used")
    parser.add_argument("-ferplus", "--ferplus_path", type=Path,
                        help="the FER+ fer2013new.csv (default: data/fer2013new.csv shipped with this project)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the summary is still printed)")
    return parser


def main(args: argparse.Namespace) -> None:
    """Prepare the split folders from the given CSV pair, or from a fresh synthetic sample."""
    fer_path, ferplus_path = args.fer_path, args.ferplus_path
    if fer_path is None:
        if ferplus_path is not None:
            raise FerplusError("-ferplus needs -fer: give the fer2013.csv whose rows its votes label")
        fer_path, ferplus_path = write_sample(args.base_folder / SYNTHETIC_FOLDER)
        print(
            f"No -fer given: using a SYNTHETIC sample (procedurally drawn faces, not FER2013) written to "
            f"{fer_path.parent}. For real training pass -fer fer2013.csv (Kaggle FER2013)."
        )
    elif ferplus_path is None:
        ferplus_path = DEFAULT_FERPLUS
    summary = generate_training_data(args.base_folder, fer_path, ferplus_path, progress=not args.quiet)
    print(f"wrote {', '.join(str(args.base_folder / folder) for folder in summary)}")
    print(format_summary(summary))


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
