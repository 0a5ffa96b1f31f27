"""``ferplus-train`` / ``train.py``: train a FER+ network, ``-d DATA -m probability``.

Multi-GPU: ``torchrun --nproc_per_node=N train.py -d DATA -m MODE`` (``--batch-size`` is per
process; the learning rate is not scaled for you).
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..engine import TrainConfig, train
from ..errors import run_cli
from ..labels import MODES
from ..models import DEFAULT_MODEL, MODELS
from ..step import STEP_KINDS
from .common import add_data_folder, add_device

DEFAULTS = TrainConfig(base_folder="")


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``train.py``."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a network on the FER+ label distributions (the paper's VGG13 recipe by default).",
    )
    add_data_folder(parser)
    parser.add_argument(
        "-m", "--training-mode", "--training_mode", dest="training_mode", choices=tuple(MODES),
        default=DEFAULTS.training_mode, help="how votes become targets",
    )
    parser.add_argument(
        "-e", "--max-epochs", "--max_epochs", dest="max_epochs", type=int, default=DEFAULTS.max_epochs,
        help="epochs to train (0: read the data, print the summary table and exit)",
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
    parser.add_argument("--output", default=None, help="run folder (default DATA/models/VGG13_<mode>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
    parser.add_argument(
        "--checkpoint-every", "--checkpoint_every", dest="checkpoint_every", type=float, metavar="MINUTES",
        default=DEFAULTS.checkpoint_every,
        help="also save last.pt partway through an epoch every MINUTES (default: 10 on the CPU, none on CUDA; "
        "0: only at epoch ends)",
    )
    parser.add_argument("--model", choices=tuple(MODELS), default=DEFAULT_MODEL, help="network from the model registry")
    parser.add_argument(
        "--step", choices=STEP_KINDS, default=DEFAULTS.step,
        help="training step: graph (one CUDA graph per step; the default on one GPU), eager (the reference; "
        "the default on the CPU and under torchrun), compiled (graph with torch.compile)",
    )
    return parser


def main(args: argparse.Namespace) -> None:
    """Train as the parsed arguments say."""
    train(TrainConfig(**vars(args)))


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: the process's arguments), train, and return the exit status."""
    return run_cli(main, get_args_parser(), argv)
