"""The training loop: the paper's VGG13 recipe on one device or many (``torchrun``).

One call to :func:`train` reads the prepared splits, trains for ``max_epochs`` epochs and
leaves a run folder behind::

    args.json           the resolved configuration, written when the run starts
    train.log           the data summary table, one line per epoch, the final result
    last.pt             the checkpoint after the latest completed epoch (every epoch), or of
                        an epoch stopped partway (a stop signal, --checkpoint-every)
    best.pt             the checkpoint of the best validation epoch so far
    curves.png          loss and accuracies per epoch
    confusion_test.png  the test confusion matrix at the best validation epoch
    tensorboard/        with ``tensorboard``: TensorBoard event files (:mod:`ferplus.monitor`)
    results.json        test accuracy at the best validation epoch, per-class figures, timings;
                        written last, so a run that has it has every file

Epochs are numbered from 0, as in the reference trainer's loop: epochs 0–19 run at the base
learning rate, 20–39 at half of it and 40 onwards at a tenth. Every epoch's randomness
(shuffle, augmentation, probability draws, dropout) is a pure function of (seed, epoch,
rank), so a run resumed from ``last.pt`` ends bit-identical (on CPU) to an uninterrupted one,
also from a checkpoint taken partway through an epoch.

Checkpoints are written on a background thread while the next epoch trains. SIGTERM and
SIGINT during training (:mod:`ferplus.stopping`) finish the current step, save such a
mid-epoch checkpoint and stop the run with the command that resumes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import platform
import shlex
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Generator, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from . import distributed, stopping
from .checkpoint import CheckpointWriter, load_checkpoint
from .data import EvalSet, TrainStream, read_data_folder, summary_table
from .errors import FerplusError
from .fileio import FolderLock, atomic_write, read_regular_file, remove_stale_temporaries, write_json
from .hardware import configure_cpu_threads, configure_cuda, use_bf16
from .labels import get_mode
from .metrics import PERCENT, summarize
from .models import MODELS, create_model
from .monitor import TensorBoardLog, require_tensorboard
from .plots import plot_confusion_matrix, plot_training_curves
from .progress import EpochProgress
from .runtime import EVAL_BATCH_SIZE, confusion_matrix, predict_scores, resolve_device
from .settings import STEP_KINDS, TrainConfig
from .step import EagerStep, make_step, resolve_step_kind

#: (first epoch, factor of the base learning rate), epochs counted from 0.
LR_SCHEDULE = ((20, 0.5), (40, 0.1))
#: Folder names of the reference trainer for a model; other models use their registry name.
RUN_FOLDER_PREFIX = {"vgg13": "VGG13"}
#: Mixed into the dropout seed so that it never equals a seed the data stream derives.
DROPOUT_SEED_TAG = 0x6472_6F70
#: Settings a resumed run must share with the run it continues (a new --lr is allowed: it is
#: how a user deliberately changes course from the resumed epoch on).
RESUME_FIXED_SETTINGS = ("seed", "momentum", "batch_size")

ARGS_FILE = "args.json"
LOG_FILE = "train.log"
RESULTS_FILE = "results.json"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
CURVES_FILE = "curves.png"
CONFUSION_FILE = "confusion_test.png"
#: What the training generator (:func:`train_steps`) yields: after every training step, and
#: after each epoch has been logged and saved (where a run may stop and later resume).
STEP, EPOCH_SAVED = "step", "epoch saved"

RunSteps = Generator[str, None, Dict[str, Any]]
RUN_FILES = (ARGS_FILE, LOG_FILE, RESULTS_FILE, BEST_CHECKPOINT, LAST_CHECKPOINT, CURVES_FILE, CONFUSION_FILE)
#: What a checkpoint needs beyond the model to continue its run, and the settings it records.
RESUME_KEYS = (
    "epoch", "config", "optimizer_state", "history",
    "best_val_accuracy", "best_epoch", "test_accuracy", "test_confusion",
)
STARTED_SETTINGS = (*RESUME_FIXED_SETTINGS, "world_size")
#: A checkpoint taken partway through an epoch holds this key (see :class:`EpochPosition`).
PARTIAL_EPOCH = "partial_epoch"
#: Minutes between mid-epoch checkpoints when ``--checkpoint-every`` is not given, by device
#: type: a CPU epoch takes up to an hour, a GPU epoch seconds (0: none).
DEFAULT_CHECKPOINT_EVERY = {"cpu": 10.0, "cuda": 0.0}
#: Steps between the ranks' agreement on stopping or saving under torchrun: each is a
#: collective call, and on CUDA a host sync, so it is rare there.
STOP_POLL_STEPS = {"cpu": 1, "cuda": 50}
#: Exit status of a run stopped by SIGTERM (128 + the signal, as a shell reports it).
EXIT_TERMINATED = 128 + signal.SIGTERM


class RunStopped(FerplusError):
    """A run stopped by SIGTERM after saving where it was; exit status 143."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=EXIT_TERMINATED)


def learning_rate(base_lr: float, epoch: int) -> float:
    """The learning rate of ``epoch`` (counted from 0): the base rate, ×0.5 from 20, ×0.1 from 40."""
    factor = 1.0
    for first_epoch, epoch_factor in LR_SCHEDULE:
        if epoch >= first_epoch:
            factor = epoch_factor
    return base_lr * factor


def run_folder_name(model: str, mode: str) -> str:
    """The run folder's name for a model and mode, e.g. ``VGG13_majority`` or ``vgg13_tiny_majority``."""
    return f"{RUN_FOLDER_PREFIX.get(model, model)}_{mode}"


def default_output(base_folder: str, model: str, mode: str) -> Path:
    """Where a run goes without ``--output``: ``<data>/models/<run folder name>``."""
    return Path(base_folder) / "models" / run_folder_name(model, mode)


def resume_command(output: Path) -> str:
    """The command that continues the run in ``output``, ready to paste into a shell."""
    return f"python train.py --resume --output {shlex.quote(str(output))}"


def make_optimizer(model: nn.Module, lr: float, momentum: float) -> torch.optim.SGD:
    """Plain momentum SGD (``v = m·v + g; w −= lr·v``), as the recipe's unit-gain momentum SGD.

    The reference's per-minibatch rate of 0.05 for minibatches of 32 with unit-gain momentum
    0.9 is, update for update, this optimiser with lr 0.005 on the minibatch-mean loss.
    """
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, dampening=0.0, nesterov=False, weight_decay=0.0
    )


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of torch's global generator (dropout) for one epoch on one rank."""
    return int(np.random.SeedSequence((seed, epoch, rank, DROPOUT_SEED_TAG)).generate_state(1)[0])


@dataclass
class EpochPosition:
    """How far one rank got into an epoch: what a mid-epoch checkpoint needs to go on exactly.

    ``steps`` minibatches (``images`` images) are done; ``loss_sum`` and ``correct`` are that
    rank's running totals and ``dropout_rng`` its CPU generator state after the last of them.
    The data stream needs nothing more: its draws are a pure function of (seed, epoch, rank),
    so it is replayed up to ``steps`` and the finished minibatches are dropped.
    """

    TENSORS = ("loss_sum", "correct", "dropout_rng")

    steps: int = 0
    images: int = 0
    loss_sum: Optional[torch.Tensor] = None
    correct: Optional[torch.Tensor] = None
    dropout_rng: Optional[torch.Tensor] = None


def evaluate(
    model: nn.Module, eval_set: EvalSet, batch_size: int = EVAL_BATCH_SIZE, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """The (8, 8) int64 confusion matrix of ``model`` on ``eval_set``, summed over all ranks.

    Each rank scores its own shard; the counts reach the host once, at the end.
    """
    confusion = confusion_matrix(
        lambda inputs: predict_scores(model, inputs, batch_size), eval_set.batches(batch_size, rank, world_size)
    )
    if world_size > 1:
        confusion = distributed.all_reduce_sum(confusion.to(next(model.parameters()).device))
    return confusion.cpu().numpy()


def train_one_epoch(
    step: EagerStep,
    stream: TrainStream,
    epoch: int,
    progress: bool = False,
    start: Optional[EpochPosition] = None,
    after_step: Optional[Callable[[int, int], None]] = None,
) -> Generator[str, None, Tuple[torch.Tensor, torch.Tensor, int]]:
    """One pass over this rank's shard of epoch ``epoch``, yielding :data:`STEP` after each minibatch.

    With ``progress``, a bar (on a terminal) or a line now and then (elsewhere) shows the
    images done, images/s and the time left (:class:`~ferplus.progress.EpochProgress`).
    ``start`` continues the epoch from a mid-epoch checkpoint (the caller has set the dropout
    generator); ``after_step(steps, images)`` runs after each yield, at a step boundary.
    Returns ``(loss_sum, correct, images)``: the summed per-image loss and the number of
    correct argmax predictions as device tensors (no host sync inside the loop), and the number
    of images seen.
    """
    step.model.train()
    step.start_epoch()
    batches: Iterator = stream.epoch(epoch)
    steps = images = 0
    if start is not None and start.steps:
        steps, images = start.steps, start.images
        step.loss_sum.copy_(start.loss_sum)
        step.correct.copy_(start.correct)
        batches = itertools.islice(batches, steps, None)  # drawn as before, the finished ones dropped
    # The bar counts images on the host: it never reads a device tensor, so it adds no sync.
    bar = EpochProgress(epoch, stream.shard_size, done=images) if progress else None
    for inputs, targets, labels in batches:
        step(inputs, targets, labels)
        steps += 1
        images += len(inputs)
        if bar is not None:
            bar.update(images)
        yield STEP
        if after_step is not None:
            after_step(steps, images)
    if bar is not None:
        bar.close()
    return step.loss_sum, step.correct, images


def format_epoch_line(record: Dict[str, Any]) -> str:
    """One ``train.log`` line for an epoch's history record."""
    line = (
        f"epoch {record['epoch']:3d} | {record['seconds']:7.1f}s | lr {record['lr']:.6g} | "
        f"train loss {record['train_loss']:.6f} | train acc {PERCENT * record['train_accuracy']:6.2f}% | "
        f"val acc {PERCENT * record['val_accuracy']:6.2f}%"
    )
    if record["test_accuracy"] is not None:
        line += f" | test acc {PERCENT * record['test_accuracy']:6.2f}%"
    return line


def format_final_lines(best_val_accuracy: float, best_epoch: int, test_accuracy: float) -> str:
    """The last two lines of a finished run's ``train.log``: its best validation epoch and result."""
    return (
        f"best validation accuracy {PERCENT * best_val_accuracy:.2f}% at epoch {best_epoch}\n"
        f"test accuracy at the best validation epoch {PERCENT * test_accuracy:.2f}%\n"
    )


def _append(path: Path, text: str) -> None:
    # The log is small: rewritten whole and atomically, a full disk never leaves half a line.
    old = path.read_text()
    atomic_write(path, lambda tmp: Path(tmp).write_text(old + text))


#: torch.manual_seed takes the seed as a 64-bit integer: below 2**63 it fits a signed one too.
MAX_SEED = 2**63
#: Far above any useful rate, and far below float32's limit (3.4e38), where 1e39 becomes inf.
MAX_LR = 1e6


def _check_config(config: TrainConfig) -> None:
    try:
        get_mode(config.training_mode)
    except ValueError as e:
        raise FerplusError(str(e)) from None
    if config.model not in MODELS:
        raise FerplusError(f"unknown model {config.model!r}; choose one of {', '.join(MODELS)}")
    if config.step not in STEP_KINDS:
        raise FerplusError(f"--step {config.step}: choose one of {', '.join(STEP_KINDS)}")
    if config.max_epochs < 0 or config.batch_size < 1:
        raise FerplusError("--max-epochs must be at least 0 and --batch-size at least 1")
    if not (0 <= config.momentum < 1):
        raise FerplusError(f"--momentum {config.momentum}: the momentum must be in [0, 1)")
    if config.seed < 0:
        raise FerplusError(f"--seed {config.seed}: the seed must be a non-negative integer")
    if config.seed >= MAX_SEED:
        raise FerplusError(f"--seed {config.seed}: the seed must be below 2**63")
    if not 0 < config.lr <= MAX_LR:
        raise FerplusError(f"--lr {config.lr}: the learning rate must be a positive number up to {MAX_LR:g}")
    every = config.checkpoint_every
    if every is not None and not (every >= 0 and math.isfinite(every)):
        raise FerplusError(f"--checkpoint-every {every}: give the minutes between checkpoints (0: none)")
    if not Path(config.base_folder).is_dir():
        raise FerplusError(f"{config.base_folder}: no such data folder")
    if config.tensorboard:
        require_tensorboard()


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def start_summary(
    device: torch.device, amp: bool, step_kind: str, model: str, parameters: int, images: Dict[str, int],
    output: Path, start_epoch: int,
) -> str:
    """What a run is about to do, printed once at its start: where, how, on what, and into which folder."""
    where = _describe_device(device)
    threads = f", {torch.get_num_threads()} CPU threads" if device.type == "cpu" else ""
    counts = " / ".join(f"{count:,} {split}" for split, count in images.items())
    resumed = f", resuming at epoch {start_epoch}" if start_epoch else ""
    return (
        f"device {where}, bf16 {'on' if amp else 'off'}, {step_kind} step{threads}\n"
        f"model {model}, {parameters:,} parameters\n"
        f"images {counts} (those the mode keeps)\n"
        f"run folder {output}{resumed}"
    )


def _versions() -> Dict[str, str]:
    return {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}


def _resume_state(config: TrainConfig, output: Path) -> Optional[Dict[str, Any]]:
    """The checkpoint to continue from, or None for a fresh run; refuses to overwrite a run."""
    last_path = output / LAST_CHECKPOINT
    if not config.resume:
        for name in (LAST_CHECKPOINT, RESULTS_FILE):
            if (output / name).exists():
                raise FerplusError(
                    f"{output}: holds an earlier run ({name}); choose another --output for a new one, "
                    f"or continue it with: {resume_command(output)}"
                )
        return None
    if not last_path.is_file():
        raise FerplusError(f"{last_path}: no checkpoint to resume from (start without --resume)")
    state = load_checkpoint(last_path)
    started = state.get("config")
    missing = [key for key in RESUME_KEYS if key not in state]
    missing += [f"config {key}" for key in STARTED_SETTINGS if not isinstance(started, dict) or key not in started]
    if missing:
        raise FerplusError(f"{last_path}: not a checkpoint to resume from: it lacks {', '.join(missing)}")
    if (state["model"], state["mode"]) != (config.model, config.training_mode):
        raise FerplusError(
            f"{last_path}: checkpoint of model {state['model']} in mode {state['mode']}, "
            f"not model {config.model} in mode {config.training_mode}"
        )
    # Resuming replays the remaining epochs of the same run, so what shapes them must not change.
    for key in RESUME_FIXED_SETTINGS:
        if started[key] != getattr(config, key):
            raise FerplusError(
                f"{last_path}: the run was started with {key} {started[key]}, not {getattr(config, key)}; "
                "resume with the same settings or start a new --output"
            )
    if started["world_size"] != distributed.launched_world_size():
        raise FerplusError(
            f"{last_path}: the run was started with {started['world_size']} processes, "
            f"not {distributed.launched_world_size()}; resume with the same number"
        )
    trained = len(state["history"])
    if trained > config.max_epochs:
        raise FerplusError(
            f"{last_path}: already trained {trained} epochs, more than --max-epochs {config.max_epochs}"
        )
    partial = state.get(PARTIAL_EPOCH)
    if partial is not None:
        if not _partial_fits(partial, trained, started["world_size"]):
            raise FerplusError(f"{last_path}: damaged: its record of the epoch in progress does not fit the run")
        if trained == config.max_epochs:
            raise FerplusError(
                f"{last_path}: stopped partway through epoch {trained}; resume with --max-epochs {trained + 1} or more"
            )
    # The weights and optimiser state must fit before the run folder is written to.
    model = create_model(config.model)
    try:
        model.load_state_dict(state["model_state"])
        make_optimizer(model, config.lr, config.momentum).load_state_dict(state["optimizer_state"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FerplusError(f"{last_path}: its weights do not fit model {config.model} ({detail})") from None
    return state


def _partial_fits(partial: Any, trained: int, world_size: int) -> bool:
    """Whether a checkpoint's record of an epoch in progress is one this trainer wrote for it."""
    if not isinstance(partial, dict) or partial.get("epoch") != trained:
        return False
    ranks = partial.get("ranks")
    numbers = [partial.get(key) for key in ("steps", "images")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers):
        return False
    seconds = partial.get("seconds")
    if not isinstance(seconds, float) or not isinstance(ranks, list) or len(ranks) != world_size:
        return False
    for rank in ranks:
        if not isinstance(rank, dict) or not all(isinstance(rank.get(key), torch.Tensor) for key in EpochPosition.TENSORS):
            return False
        if rank["loss_sum"].dim() or rank["correct"].dim() or rank["dropout_rng"].dtype != torch.uint8:
            return False
    return True


def _epoch_position(partial: Dict[str, Any], rank: int) -> EpochPosition:
    """This rank's place in the epoch a mid-epoch checkpoint stopped in."""
    return EpochPosition(partial["steps"], partial["images"], **partial["ranks"][rank])


def read_results(path: Path) -> Dict[str, Any]:
    """The ``results.json`` of a finished run; a :class:`FerplusError` if the file is not one."""
    try:
        results = json.loads(read_regular_file(path))
    except OSError as e:
        raise FerplusError(f"{path}: cannot read: {e.strerror or e}") from None
    except ValueError:
        results, problem = None, "not JSON"
    else:
        problem = _results_problem(results)
    if problem:
        raise FerplusError(
            f"{path}: not the results of a run ({problem}); delete it and resume the run to write it again"
        )
    return results


def finished_results(output: Path, epochs: int) -> Optional[Dict[str, Any]]:
    """The results of the run in ``output`` if it has trained exactly ``epochs`` epochs, else None."""
    path = output / RESULTS_FILE
    if not path.is_file():
        return None
    results = read_results(path)
    return results if results["epochs"] == epochs else None


def _results_problem(results: Any) -> Optional[str]:
    if not isinstance(results, dict):
        return "not a JSON object"
    epochs, accuracy = results.get("epochs"), results.get("test_accuracy")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        return f"epochs {epochs!r} is not a positive whole number"
    if not isinstance(accuracy, (int, float)) or isinstance(accuracy, bool) or not 0 <= accuracy <= 1:
        return f"test_accuracy {accuracy!r} is not a fraction between 0 and 1"
    return None


@contextlib.contextmanager
def _claim_run_folder(output: Path, main: bool) -> Iterator[None]:
    """Hold ``output`` for this run: rank 0 locks it for the run's whole length, and every rank
    fails when it cannot; then the temporary files of saves that a kill interrupted are removed."""
    lock = FolderLock(output) if main else None
    error: Optional[Exception] = None
    if lock is not None:
        try:
            if not lock.acquire():
                error = FerplusError(f"{output}: in use by another run; wait for it to end or choose another --output")
        except OSError as e:
            error = e
    distributed.raise_on_every_rank(error)
    try:
        if lock is not None:
            remove_stale_temporaries(output, RUN_FILES)
        yield
    finally:
        if lock is not None:
            lock.release()


def train(config: TrainConfig) -> Dict[str, Any]:
    """Train (or resume) one run as ``config`` says and return its results (what ``results.json`` holds).

    With ``max_epochs == 0`` it only reads the data, prints the summary table and returns
    ``{"counts": ...}``. Otherwise the run folder is locked for the whole run (on rank 0), so a
    second run on it fails at once; resuming a finished run with nothing left to train returns
    its results and writes nothing (a finished run that lacks a file gets it written). User
    errors raise :class:`FerplusError` (exit 2), all of them before anything is written; a
    non-finite training loss stops the run with exit code 1, leaving the last good ``last.pt``.
    SIGTERM or SIGINT during training saves a mid-epoch ``last.pt`` after the current step and
    raises :class:`RunStopped` (exit 143) or ``KeyboardInterrupt`` (exit 130) with the command
    that resumes the run.
    """
    with stopping.stop_on_signals():
        return run_to_end(train_steps(config))


def run_to_end(steps: RunSteps) -> Dict[str, Any]:
    """Advance a run's generator to its end and return its results."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def train_steps(config: TrainConfig) -> RunSteps:
    """:func:`train` as a generator: it yields :data:`STEP` after every training step and
    :data:`EPOCH_SAVED` after every saved epoch, and returns the results, so that a caller
    can interleave several runs in one process (:mod:`ferplus.multirun`)."""
    started = time.perf_counter()
    _check_config(config)
    device = resolve_device(config.device)
    dist_info = distributed.init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        configure_cuda()
    else:
        configure_cpu_threads()
    output = Path(config.output or default_output(config.base_folder, config.model, config.training_mode))
    # A run folder belongs to one run: a second one on it fails before it writes anything.
    claim = _claim_run_folder(output, dist_info.is_main) if config.max_epochs > 0 else contextlib.nullcontext()
    try:
        with claim:
            return (yield from _train(config, output, device, dist_info, started))
    except KeyboardInterrupt as e:
        last = output / LAST_CHECKPOINT
        if str(e) or config.max_epochs == 0 or not last.is_file():
            raise
        raise KeyboardInterrupt(f"{last} keeps the last save: continue with {resume_command(output)}") from None
    finally:
        distributed.cleanup()


def _train(
    config: TrainConfig, output: Path, device: torch.device, dist_info: distributed.DistInfo, started: float
) -> RunSteps:
    rank, world_size, main = dist_info.rank, dist_info.world_size, dist_info.is_main
    mode = config.training_mode
    amp = use_bf16(device, config.amp)
    step_kind = resolve_step_kind(config.step, device, dist_info.enabled)
    if step_kind != "eager" and dist_info.enabled:
        raise FerplusError(f"--step {step_kind}: not under torchrun (use --step eager or auto)")

    # The run folder first, so that a wrong --output or --resume fails before the data loads:
    # an earlier run is never overwritten unless resumed.
    state = _resume_state(config, output) if config.max_epochs > 0 else None
    finished = state is not None and len(state["history"]) == config.max_epochs
    results = finished_results(output, config.max_epochs) if finished else None
    # A run stopped while it wrote its end lacks a file: the end is written again.
    if results is not None and all((output / name).is_file() for name in RUN_FILES):
        if main:
            print(f"{output}: already trained {config.max_epochs} epochs, nothing to do (raise -e to train longer)")
        return results

    # Data: the whole split as uint8 on the device; the evaluation sets preprocessed once.
    base_folder = Path(config.base_folder)
    train_data, val_data, test_data = read_data_folder(base_folder).values()  # one generation
    stream = TrainStream(
        train_data, mode, config.batch_size, device, seed=config.seed, rank=rank, world_size=world_size
    )
    val_set, test_set = EvalSet(val_data, device), EvalSet(test_data, device)
    kept_images = ((train_data, stream.num_images), (val_data, val_set.num_images), (test_data, test_set.num_images))
    for data, count in kept_images:
        if count == 0:
            raise FerplusError(f"{data.folder}: no images left to use in mode {mode}")
    if len(stream) == 0:
        raise FerplusError(f"{train_data.folder}: fewer images than the {world_size} processes")
    counts = {"Train": stream.class_counts, "Val": val_set.class_counts, "Test": test_set.class_counts}
    table = summary_table(counts)
    if main:
        print(table, flush=True)
    if config.max_epochs == 0:
        return {"counts": {split: values.tolist() for split, values in counts.items()}}

    distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    resolved = {
        **dataclasses.asdict(config),
        "output": str(output),
        "device": str(device),
        "amp": amp,
        "step": step_kind,
        "world_size": world_size,
        "global_batch_size": config.batch_size * world_size,
    }
    log_path = output / LOG_FILE

    # Model and optimiser, fresh or from last.pt.
    torch.manual_seed(config.seed)
    raw_model = create_model(config.model).to(device, memory_format=torch.channels_last)  # faster on both devices
    optimizer = make_optimizer(raw_model, config.lr, config.momentum)
    history: List[Dict[str, Any]] = []
    best = {"best_val_accuracy": -1.0, "best_epoch": None, "test_accuracy": None, "test_confusion": None}
    partial: Optional[Dict[str, Any]] = None
    if state is not None:
        raw_model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        history = state["history"]
        best = {key: state[key] for key in best}
        partial = state.get(PARTIAL_EPOCH)
    start_epoch = len(history)
    model = raw_model
    if dist_info.enabled:
        model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    step = make_step(
        step_kind, model, raw_model, optimizer, get_mode(mode).loss, config.batch_size, amp, channels_last=True
    )
    # The step that runs: a fast step whose capture or self-check failed runs the eager one.
    resolved.update(step=step.kind, step_requested=step_kind, step_fallback=step.fallback)
    if main:
        output.mkdir(parents=True, exist_ok=True)
        write_json(output / ARGS_FILE, resolved)
        images = {"train": stream.num_images, "val": val_set.num_images, "test": test_set.num_images}
        parameters = sum(p.numel() for p in raw_model.parameters())
        print(start_summary(device, amp, step.kind, config.model, parameters, images, output, start_epoch), flush=True)
    board = TensorBoardLog(output, start_epoch) if main and config.tensorboard else None
    if main:  # the log restarts from the checkpoint's history, so a resumed log reads as an uninterrupted one
        header = table + "\n" + "".join(format_epoch_line(record) + "\n" for record in history)
        atomic_write(log_path, lambda tmp: Path(tmp).write_text(header))

    def checkpoint(epoch: int) -> Dict[str, Any]:
        return {
            "model": config.model,
            "mode": mode,
            "model_state": raw_model.state_dict(),
            "epoch": epoch,  # the epoch these weights come from, as train.log numbers it
            "config": resolved,
            "optimizer_state": optimizer.state_dict(),
            "history": history,
            **best,
        }

    every = config.checkpoint_every
    if every is None:
        every = DEFAULT_CHECKPOINT_EVERY[device.type]
    poll_steps = STOP_POLL_STEPS[device.type] if dist_info.enabled else 1
    progress = main
    last_path = output / LAST_CHECKPOINT
    kept = f"{last_path} keeps epoch {history[-1]['epoch']}" if history else "no checkpoint written"
    with CheckpointWriter() as writer, stopping.training():
        last_save = time.monotonic()

        def agree(due: bool) -> Tuple[int, bool]:
            """(the stop signal or 0, whether a save is due), the same on every rank: any rank's
            signal and rank 0's clock decide for all."""
            signum = stopping.requested() or 0
            if not dist_info.enabled:
                return signum, due
            flags = torch.tensor([signum, int(due and main)], device=device)
            signum, due = distributed.all_reduce_max(flags).tolist()
            return int(signum), bool(due)

        def save_partial(epoch: int, steps: int, images: int, seconds: float) -> None:
            """Save the epoch so far as last.pt, in the background (every rank takes part)."""
            nonlocal kept
            position = {"loss_sum": step.loss_sum, "correct": step.correct, "dropout_rng": torch.get_rng_state()}
            ranks = distributed.all_gather_objects({key: value.detach().cpu() for key, value in position.items()})
            if not all(math.isfinite(rank["loss_sum"].item()) for rank in ranks):
                return  # diverged: the epoch's end stops the run, with the last good last.pt kept
            if main:
                record = {"epoch": epoch, "steps": steps, "images": images, "seconds": seconds, "ranks": ranks}
                writer.submit([last_path], {**checkpoint(epoch), PARTIAL_EPOCH: record})
            kept = f"{last_path} keeps epoch {epoch} up to step {steps} of {len(stream)}"

        for epoch in range(start_epoch, config.max_epochs):
            epoch_start = time.perf_counter()
            lr = learning_rate(config.lr, epoch)
            step.set_lr(lr)
            torch.manual_seed(epoch_seed(config.seed, epoch, rank))  # dropout masks
            start = _epoch_position(partial, rank) if partial is not None and partial["epoch"] == epoch else None
            earlier_seconds = partial["seconds"] if start is not None else 0.0
            if start is not None and device.type == "cpu":
                torch.set_rng_state(start.dropout_rng)  # the draws go on where they stopped
            elif start is not None:  # a CUDA graph's draws cannot be set back: fresh ones for the rest
                torch.manual_seed(epoch_seed(config.seed, epoch, rank) + start.steps)

            def after_step(steps: int, images: int) -> None:
                """At a step boundary: stop on a signal, save on the timer (every rank decides alike)."""
                nonlocal last_save
                if steps % poll_steps:
                    return
                signum, due = agree(every > 0 and time.monotonic() - last_save >= 60 * every)
                if not (signum or due):
                    return
                save_partial(epoch, steps, images, earlier_seconds + time.perf_counter() - epoch_start)
                last_save = time.monotonic()
                if signum:
                    writer.wait()
                    _stop(signum, kept, output)

            loss_sum, correct, images = yield from train_one_epoch(step, stream, epoch, progress, start, after_step)
            totals = torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(float(images))])
            loss_sum, correct, images = distributed.all_reduce_sum(totals).tolist()  # the epoch's one host sync
            train_seconds = earlier_seconds + time.perf_counter() - epoch_start
            train_loss = loss_sum / images
            if not math.isfinite(train_loss):
                message = (
                    f"epoch {epoch}: the training loss is {train_loss} (not finite); "
                    f"stopped ({kept}); try a lower --lr"
                )
                writer.wait()
                if main:
                    _append(log_path, message + "\n")
                raise FerplusError(message, exit_code=1)

            distributed.broadcast_buffers(raw_model)  # the ranks evaluate, and rank 0 saves, one model
            val_accuracy = summarize(evaluate(raw_model, val_set, EVAL_BATCH_SIZE, rank, world_size))["accuracy"]
            test_accuracy = None
            improved = val_accuracy > best["best_val_accuracy"]
            if improved:  # test only at new best validation epochs: the result never selects on the test set
                test_confusion = evaluate(raw_model, test_set, EVAL_BATCH_SIZE, rank, world_size)
                test_accuracy = summarize(test_confusion)["accuracy"]
                best = {
                    "best_val_accuracy": val_accuracy,
                    "best_epoch": epoch,
                    "test_accuracy": test_accuracy,
                    "test_confusion": test_confusion.tolist(),
                }
            record = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": correct / images,
                "val_accuracy": val_accuracy,
                "test_accuracy": test_accuracy,
                "lr": lr,
                "seconds": earlier_seconds + time.perf_counter() - epoch_start,
                "train_seconds": train_seconds,
                "train_images": int(images),
            }
            history.append(record)
            partial = None
            if main:
                # best.pt before last.pt, one serialisation for both: a kill between the two
                # leaves a last.pt whose run retrains this epoch and saves best.pt again.
                saved = [output / BEST_CHECKPOINT] if improved else []
                writer.submit([*saved, last_path], checkpoint(epoch))
                line = format_epoch_line(record)
                _append(log_path, line + "\n")
                print(line, flush=True)
                if board is not None:
                    board.epoch(record)
            kept, last_save = f"{last_path} keeps epoch {epoch}", time.monotonic()
            yield EPOCH_SAVED
            signum, _ = agree(False)
            if signum and epoch + 1 < config.max_epochs:  # a signal while it evaluated or saved
                writer.wait()
                _stop(signum, kept, output)
        writer.wait()  # every checkpoint on disk before the run's end is written

    results = {
        "mode": mode,
        "model": config.model,
        "seed": config.seed,
        "epochs": len(history),
        "best_val_accuracy": best["best_val_accuracy"],
        "best_epoch": best["best_epoch"],
        "test_accuracy": best["test_accuracy"],
        "test_per_class_accuracy": summarize(np.asarray(best["test_confusion"]))["per_class_accuracy"],
        "test_confusion_matrix": best["test_confusion"],
        "wall_seconds": sum(record["seconds"] for record in history),
        "session_wall_seconds": time.perf_counter() - started,
        "train_images_per_second": sum(r["train_images"] for r in history) / sum(r["train_seconds"] for r in history),
        "device": _describe_device(device),
        "world_size": world_size,
        "versions": _versions(),
        "config": resolved,
        "history": history,
    }
    if main:
        final_lines = format_final_lines(best["best_val_accuracy"], best["best_epoch"], best["test_accuracy"])
        _append(log_path, final_lines)
        plot_training_curves(history, best["best_epoch"], output / CURVES_FILE)
        title = f"{run_folder_name(config.model, mode)}: test at best validation epoch {best['best_epoch']}"
        plot_confusion_matrix(np.asarray(best["test_confusion"]), output / CONFUSION_FILE, title)
        if board is not None:
            board.finish(results, output / CONFUSION_FILE, resolved)
        # Last: a run folder with results.json is a finished run with every file in it.
        write_json(output / RESULTS_FILE, results)
        print(final_lines + f"run folder: {output}", flush=True)
    return results


def _stop(signum: int, kept: str, output: Path) -> None:
    """End a run stopped by ``signum`` once its last.pt holds where it was (``kept`` says where):
    KeyboardInterrupt for SIGINT (exit 130), :class:`RunStopped` for SIGTERM (exit 143), each
    with the command that resumes the run."""
    advice = f"{kept}: continue with {resume_command(output)}"
    if signum == signal.SIGINT:
        raise KeyboardInterrupt(advice)
    raise RunStopped(f"stopped by {stopping.signal_name(signum)}; {advice}")
