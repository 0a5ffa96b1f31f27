"""Reproduce the paper's table: ``python reproduce.py -d DATA --seeds 5``.

Trains every mode with every seed under ``DATA/models/reproduce/`` (finished runs are
skipped, interrupted ones resumed), then writes ``reproduce.md`` and ``reproduce.csv`` there.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

import argparse  # noqa: E402

from ferplus.errors import FerplusError, run_cli  # noqa: E402
from ferplus.labels import MODES  # noqa: E402
from ferplus.models import DEFAULT_MODEL, MODELS  # noqa: E402
from ferplus.reproduce import reproduce  # noqa: E402
from ferplus.step import STEP_KINDS  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``reproduce.py``."""
    parser = argparse.ArgumentParser(
        prog="reproduce.py", description="Train every mode with several seeds and tabulate the test accuracy."
    )
    parser.add_argument("-d", "--base_folder", required=True, help="folder holding FER2013Train/Valid/Test")
    parser.add_argument("--seeds", type=int, default=5, help="runs per mode (seeds 0 … N−1)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to train")
    parser.add_argument("-e", "--max-epochs", type=int, default=100, help="epochs per run")
    parser.add_argument("--model", choices=tuple(MODELS), default=DEFAULT_MODEL, help="network from the model registry")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to train")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=None,
        help="bfloat16 autocast (default: on CUDA and on CPUs with native bf16)",
    )
    parser.add_argument("--step", choices=STEP_KINDS, default="auto", help="training step (see train.py --help)")
    parser.add_argument("--output", default=None, help="folder of the runs and tables (default DATA/models/reproduce)")
    parser.add_argument(
        "-j", "--jobs", type=int, default=1,
        help="runs trained at once per device, interleaved step by step (on CUDA: over every GPU)",
    )
    parser.add_argument(
        "--time-budget", type=float, default=None, metavar="SECONDS",
        help="start no run after this long and stop running ones after their next saved epoch (rerun to resume)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    """Run the reproduction as the parsed arguments say."""
    if args.seeds < 1 or args.max_epochs < 1 or args.jobs < 1:
        raise FerplusError("--seeds, --max-epochs and --jobs must be at least 1")
    if args.time_budget is not None and not args.time_budget > 0:
        raise FerplusError(f"--time-budget {args.time_budget}: give a positive number of seconds")
    reproduce(
        args.base_folder, seeds=args.seeds, modes=args.modes, max_epochs=args.max_epochs, model=args.model,
        device=args.device, output=args.output, amp=args.amp, step=args.step, jobs=args.jobs,
        time_budget=args.time_budget,
    )


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
