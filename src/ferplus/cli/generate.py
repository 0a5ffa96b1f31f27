"""``ferplus-generate`` / ``generate_training_data.py``: the split folders (PNGs + label.csv) that training reads.

    python generate_training_data.py -d data -fer fer2013.csv              # real data
    python generate_training_data.py -d data                               # a synthetic sample

fer2013.csv comes from Kaggle ("Challenges in Representation Learning: Facial Expression
Recognition Challenge"); the FER+ votes (fer2013new.csv) ship in this project's data/.
Without -fer, a small synthetic sample (procedurally drawn faces, not FER2013) is written to
<base folder>/synthetic/ and prepared instead, so that the tools can be tried end to end.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..errors import FerplusError, run_cli
from .common import make_parser

#: The FER+ votes that ship with the project, found from a clone or an editable install.
SHIPPED_FERPLUS = Path(__file__).resolve().parents[3] / "data" / "fer2013new.csv"
SYNTHETIC_FOLDER = "synthetic"


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of generate_training_data.py (the reference FER+ tools' spellings are accepted too)."""
    parser = make_parser("generate_training_data.py", __doc__)
    parser.add_argument(
        "-d", "--base-folder", "--base_folder", dest="base_folder", type=Path, default=Path("data"),
        help="folder that receives FER2013Train/ FER2013Valid/ FER2013Test/",
    )
    parser.add_argument(
        "-fer", "--fer-path", "--fer_path", dest="fer_path", type=Path,
        help="the Kaggle fer2013.csv; without it a synthetic sample is used",
    )
    parser.add_argument(
        "-ferplus", "--ferplus-path", "--ferplus_path", dest="ferplus_path", type=Path,
        help="the FER+ fer2013new.csv (default: data/fer2013new.csv shipped with this project)",
    )
    parser.add_argument(
        "--workers", type=int,
        help="processes that parse fer2013.csv (default: one per CPU for a large file, else 1)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the summary is still printed)")
    return parser


def main(args: argparse.Namespace) -> None:
    """Prepare the split folders from the given CSV pair, or from a fresh synthetic sample."""
    from ..prepare import auto_workers, format_summary, generate_training_data
    from ..synthetic import write_sample

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
        if not SHIPPED_FERPLUS.is_file():
            raise FerplusError("-ferplus: give the FER+ votes file fer2013new.csv (it ships in the project's data/)")
        ferplus_path = SHIPPED_FERPLUS
    workers = auto_workers(fer_path) if args.workers is None else args.workers
    if workers < 1:
        raise FerplusError(f"--workers {workers}: give at least 1")
    summary = generate_training_data(args.base_folder, fer_path, ferplus_path, progress=not args.quiet, workers=workers)
    print(f"wrote {', '.join(str(args.base_folder / folder) for folder in summary)}")
    print(format_summary(summary))


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), generate, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
