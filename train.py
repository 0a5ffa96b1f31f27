"""Train a FER+ network: ``python train.py -d DATA -m probability``.

Multi-GPU: ``torchrun --nproc_per_node=N train.py -d DATA -m MODE`` (``--batch-size`` is per
process; the learning rate is not scaled for you).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

import argparse  # noqa: E402

from ferplus.engine import TrainConfig, train  # noqa: E402
from ferplus.errors import run_cli  # noqa: E402
from ferplus.labels import MODES  # noqa: E402
from ferplus.models import DEFAULT_MODEL, MODELS  # noqa: E402
from ferplus.step import STEP_KINDS  # noqa: E402

DEFAULTS = TrainConfig(base_folder="")


def get_args_parser() -> argparse.ArgumentParser:
    """The command line of ``train.py``."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a network on the FER+ label distributions (the paper's VGG13 recipe by default).",
    )
    parser.add_argument("-d", "--base_folder", required=True, help="folder holding FER2013Train/Valid/Test")
    parser.add_argument(
        "-m", "--training_mode", choices=MODES, default=DEFAULTS.training_mode, help="how votes become targets"
    )
    parser.add_argument(
        "-e", "--max-epochs", type=int, default=DEFAULTS.max_epochs,
        help="epochs to train (0: read the data, print the summary table and exit)",
    )
    parser.add_argument("-b", "--batch-size", type=int, default=DEFAULTS.batch_size, help="minibatch size per process")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr, help="SGD learning rate on the minibatch-mean loss")
    parser.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="SGD momentum")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of all randomness")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=DEFAULTS.device, help="where to train")
    parser.add_argument(
        "--amp", action=argparse.BooleanOptionalAction, default=DEFAULTS.amp,
        help="bfloat16 autocast (default: on CUDA and on CPUs with native bf16)",
    )
    parser.add_argument("--output", default=None, help="run folder (default DATA/models/VGG13_<mode>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output from its last.pt")
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


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
