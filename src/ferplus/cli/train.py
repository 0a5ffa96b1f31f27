"""``ferplus-train`` / ``train.py``: train a FER+ network, ``-d DATA -m probability``.

Resume a run from its folder alone: ``train.py --resume --output RUN`` takes the run's settings
from ``RUN/args.json``; with it, only -e, --lr, --device, --amp, --tensorboard and --checkpoint-every may change.

Multi-GPU: ``torchrun --nproc_per_node=N train.py -d DATA -m MODE`` (``--batch-size`` is per
process; the learning rate is not scaled for you).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Set

from ..errors import FerplusError, run_cli
from ..settings import DEFAULT_MODEL, MODE_NAMES, MODEL_NAMES, STEP_KINDS, TrainConfig
from .common import add_data_folder, add_device, given_flags, make_parser

DEFAULTS = TrainConfig(base_folder="")
#: What ``--resume`` may change: how long to train, the learning rate from the resumed epoch on,
#: where and how the arithmetic runs (bit-identical resumes need the same device and dtype), and
#: what it writes on the side (TensorBoard, the mid-epoch checkpoint timer).
RESUMABLE_CHANGES = ("max_epochs", "lr", "device", "amp", "tensorboard", "checkpoint_every")
#: Flags that say which run to resume rather than how it trains.
RESUME_SELECTORS = ("resume", "output")


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``train.py``."""
    parser = make_parser(
        "train.py", "Train a network on the FER+ label distributions (the paper's VGG13 recipe by default)."
    )
    add_data_folder(parser, required=False, help="folder holding FER2013Train/ FER2013Valid/ FER2013Test/ "
                    "(required, except with --resume --output RUN)")
    parser.add_argument(
        "-m", "--training-mode", "--training_mode", dest="training_mode", choices=MODE_NAMES,
        default=DEFAULTS.training_mode, help="how votes become targets",
    )
    parser.add_argument(
        "-e", "--max-epochs", "--max_epochs", dest="max_epochs", type=int, default=DEFAULTS.max_epochs,
        help="epochs to train (0: read the data, print the summary table and exit; on --resume: the run's own)",
    )
    parser.add_argument(
        "-b", "--batch-size", "--batch_size", dest="batch_size", type=int, default=DEFAULTS.batch_size,
        help="minibatch size per process",
    )
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="SGD learning rate on the minibatch-mean loss")
    parser.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="SGD momentum")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of all randomness")
    add_device(parser, DEFAULTS.device, "where to train")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=DEFAULTS.amp,
        help="bfloat16 autocast (default: on CUDA and on CPUs with native bf16)",
    )
    parser.add_argument("--output", default=None, help="run folder (default: DATA/models/VGG13_<mode>)")
    parser.add_argument(
        "--resume", action="store_true",
        help="continue the run in --output from its last.pt, with the settings in its args.json",
    )
    parser.add_argument(
        "--checkpoint-every", "--checkpoint_every", dest="checkpoint_every", type=float, metavar="MINUTES",
        default=DEFAULTS.checkpoint_every,
        help="also save last.pt partway through an epoch every MINUTES (default: 10 on the CPU, none on CUDA; "
        "0: only at epoch ends)",
    )
    parser.add_argument("--model", choices=MODEL_NAMES, default=DEFAULT_MODEL, help="network from the model registry")
    parser.add_argument(
        "--step", choices=STEP_KINDS, default=DEFAULTS.step,
        help="training step: graph (one CUDA graph per step; the default on one GPU), eager (the reference; "
        "the default on the CPU and under torchrun), compiled (graph with torch.compile)",
    )
    parser.add_argument(
        "--tensorboard", action="store_true",
        help="write TensorBoard event files into RUN/tensorboard/ (needs the tensorboard package)",
    )
    return parser


def _flag(dest: str) -> str:
    # Every setting's long option is its field name with dashes.
    return "--" + dest.replace("_", "-")


def _same_folder(given: str, started: str) -> bool:
    try:
        return os.path.samefile(given, started)
    except OSError:  # the run's folder is gone or was named from another working folder
        return not Path(started).is_dir() or Path(given) == Path(started)


def resumed_config(args: argparse.Namespace, given: Set[str], output: Path) -> TrainConfig:
    """The settings of the run in ``output`` (its ``args.json``), with the changes ``--resume`` allows.

    A flag in ``given`` that would change anything else is a :class:`FerplusError` naming it. A
    folder without ``args.json`` keeps the flags as given, which must then name the data folder
    (``train`` says what else is missing).
    """
    from ..engine import ARGS_FILE

    path = output / ARGS_FILE
    if not path.is_file():
        if args.base_folder is None:
            raise FerplusError(f"{path}: no such file, so the run's settings are unknown; give them (-d DATA …) with --resume")
        return TrainConfig(**vars(args))
    try:
        started: Dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FerplusError(f"{path}: cannot read the run's settings ({e})") from None
    if not isinstance(started, dict) or not isinstance(started.get("base_folder"), str):
        raise FerplusError(f"{path}: not the settings of a run")
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {key: value for key, value in started.items() if key in fields}
    if isinstance(settings.get("device"), str):
        settings["device"] = settings["device"].split(":")[0]  # the resolved device, e.g. cuda:0 → cuda
    settings.update(output=str(output), resume=True)
    for dest in sorted(given - set(RESUME_SELECTORS)):
        value = getattr(args, dest)
        if dest in RESUMABLE_CHANGES:
            settings[dest] = value
        elif dest == "base_folder":
            if not _same_folder(value, settings["base_folder"]):
                raise FerplusError(
                    f"-d {value}: the run in {output} was trained on {settings['base_folder']}; "
                    "resume without -d, or start a new --output"
                )
            settings[dest] = value
        elif value != settings.get(dest, getattr(DEFAULTS, dest)):
            raise FerplusError(
                f"{_flag(dest)} {value}: the run in {output} was started with {settings.get(dest)}; "
                f"--resume may change only {', '.join(_flag(d) for d in RESUMABLE_CHANGES)}"
            )
    if not Path(settings["base_folder"]).is_dir():
        raise FerplusError(
            f"{path}: the run's data folder {settings['base_folder']} is not found from here; give it with -d"
        )
    return TrainConfig(**settings)


def main(args: argparse.Namespace, given: Optional[Set[str]] = None) -> None:
    """Train as the parsed arguments say; ``given`` names the flags given (for ``--resume``)."""
    from ..engine import default_output, train  # torch loads here, after the flags are known to be right

    if not args.resume:
        if args.base_folder is None:
            raise FerplusError("-d/--base-folder is required (or continue a run with --resume --output RUN)")
        train(TrainConfig(**vars(args)))
        return
    if args.output is None and args.base_folder is None:
        raise FerplusError("--resume: name the run folder with --output RUN")
    output = Path(args.output or default_output(args.base_folder, args.model, args.training_mode))
    train(resumed_config(args, set(vars(args)) if given is None else given, output))


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), train, and return the exit status."""
    parser = get_args_parser()
    return run_cli(lambda args: main(args, given_flags(parser, argv)), parser, argv)
