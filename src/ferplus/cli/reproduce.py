"""``ferplus-reproduce`` / ``reproduce.py``: the paper's table, ``-d DATA --seeds 5``.

Trains every mode with every seed under ``DATA/models/reproduce/`` (finished runs are
skipped, interrupted ones resumed), then writes ``reproduce.md`` and ``reproduce.csv`` there.
"""

from __future__ import annotations

import argparse
import shlex
from typing import List, Optional, Sequence

from ..errors import FerplusError, run_cli
from ..settings import DEFAULT_MODEL, MODE_NAMES, MODEL_NAMES, STEP_KINDS
from .common import add_data_folder, add_device, make_parser


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``reproduce.py``."""
    parser = make_parser("reproduce.py", "Train every mode with several seeds and tabulate the test accuracy.")
    add_data_folder(parser)
    parser.add_argument("--seeds", type=int, default=5, help="runs per mode (seeds 0 … N−1)")
    parser.add_argument("--modes", nargs="+", choices=MODE_NAMES, default=list(MODE_NAMES), help="modes to train")
    parser.add_argument(
        "-e", "--max-epochs", "--max_epochs", dest="max_epochs", type=int, default=100, help="epochs per run"
    )
    parser.add_argument("--model", choices=MODEL_NAMES, default=DEFAULT_MODEL, help="network from the model registry")
    add_device(parser, "auto", "where to train")
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
        "--time-budget", "--time_budget", dest="time_budget", type=float, default=None, metavar="SECONDS",
        help="start no run after this long and stop running ones after their next saved epoch (rerun to resume)",
    )
    return parser


#: More runs per mode than anyone trains; a larger --seeds is a typo that would only fill memory.
MAX_SEEDS = 1000


def command_line(args: argparse.Namespace) -> str:
    """The ``reproduce.py`` command that ``args`` came from, spelled out to be pasted into a shell."""
    words: List[str] = ["reproduce.py", "-d", args.base_folder, "--seeds", str(args.seeds), "--modes", *args.modes,
                        "-e", str(args.max_epochs), "--model", args.model, "--device", args.device, "--step", args.step,
                        "-j", str(args.jobs)]
    if args.amp is not None:
        words.append("--amp" if args.amp else "--no-amp")
    if args.output is not None:
        words += ["--output", args.output]
    if args.time_budget is not None:
        words += ["--time-budget", repr(args.time_budget)]
    return shlex.join(words)


def main(args: argparse.Namespace) -> None:
    """Run the reproduction as the parsed arguments say."""
    if not (1 <= args.seeds <= MAX_SEEDS) or args.max_epochs < 1 or args.jobs < 1:
        raise FerplusError(f"--seeds must be in [1, {MAX_SEEDS}], --max-epochs and --jobs at least 1")
    if args.time_budget is not None and not args.time_budget > 0:
        raise FerplusError(f"--time-budget {args.time_budget}: give a positive number of seconds")
    from ..reproduce import reproduce

    args.modes = list(dict.fromkeys(args.modes))  # named twice, trained once (and so advised)
    try:
        reproduce(
            args.base_folder, seeds=args.seeds, modes=args.modes, max_epochs=args.max_epochs, model=args.model,
            device=args.device, output=args.output, amp=args.amp, step=args.step, jobs=args.jobs,
            time_budget=args.time_budget,
        )
    except KeyboardInterrupt as e:
        raise KeyboardInterrupt("; ".join(filter(None, (str(e), f"resume with: {command_line(args)}")))) from None


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), reproduce, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
