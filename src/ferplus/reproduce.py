"""The paper's results table in one command: every mode trained with several seeds, then summarised.

Each run lives in ``<root>/<model folder>_<mode>_seed<k>/`` (``root`` defaults to
``<data>/models/reproduce``). A run whose ``results.json`` already covers the requested number
of epochs is skipped, once that file is found to match the run's ``last.pt``, ``best.pt`` and
``train.log`` (a result that does not is refused, naming the file); one with a ``last.pt`` is
resumed; the rest start fresh. Several runs
train at once with ``jobs`` (:mod:`ferplus.multirun`), over all GPUs on CUDA; a time budget
stops them after a saved epoch, to be resumed by the next call. The summary of the finished
runs goes to ``reproduce.md`` and ``reproduce.csv`` in ``root``.
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .checkpoint import load_checkpoint
from .data import read_label_file
from .engine import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, LOG_FILE, RESULTS_FILE, TrainConfig, finished_results, format_final_lines,
    run_folder_name,
)
from .errors import FerplusError
from .fer_format import LABEL_FILE, SPLIT_FOLDERS
from .fileio import atomic_write, read_regular_file
from .labels import MODES
from .metrics import PERCENT
from .multirun import train_runs

#: Test accuracy (%) of the paper's Table 2: (mean, standard deviation, runs) per mode.
PAPER_RESULTS = {
    "majority": (83.852, 0.631, 5),
    "multi_target": (83.966, 0.362, 5),
    "probability": (84.986, 0.366, 5),
    "crossentropy": (84.716, 0.239, 5),
}
#: Images in the prepared FER+ training split of the full data.
FERPLUS_TRAIN_IMAGES = 28_558
CSV_FILE = "reproduce.csv"
MARKDOWN_FILE = "reproduce.md"
CSV_COLUMNS = ("mode", "runs", "mean_test_accuracy", "std_test_accuracy", "paper_mean", "paper_std", "paper_runs")


def run_folder(root: Path, model: str, mode: str, seed: int) -> Path:
    """The folder of one (mode, seed) run."""
    return root / f"{run_folder_name(model, mode)}_seed{seed}"


def checked_results(folder: Path, epochs: int) -> Optional[dict]:
    """The results of the run in ``folder`` if it has trained exactly ``epochs`` epochs, else None.

    They are taken only if they match what the run itself recorded: the epochs, best epoch and
    accuracies in its ``last.pt`` (whose digest is checked), the best epoch's in ``best.pt``, and
    the final lines of ``train.log``. Anything else (a ``results.json`` edited or copied from
    another run) is a :class:`FerplusError` naming the file: the table holds only trained results.
    """
    results = finished_results(folder, epochs)
    if results is None:
        return None
    path = folder / RESULTS_FILE
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT, LOG_FILE):
        if not (folder / name).is_file():
            raise FerplusError(f"{path}: refused: its run has no {name}; delete the folder to train the run again")
    last, best = load_checkpoint(folder / LAST_CHECKPOINT), load_checkpoint(folder / BEST_CHECKPOINT)
    recorded = {
        "epochs": len(last.get("history", ())),
        "best_epoch": last.get("best_epoch"),
        "best_val_accuracy": last.get("best_val_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
    }
    found = [key for key, value in recorded.items() if results.get(key) != value]
    if best.get("epoch") != recorded["best_epoch"] or best.get("test_accuracy") != recorded["test_accuracy"]:
        found.append(f"the epoch of {BEST_CHECKPOINT}")
    log = read_regular_file(folder / LOG_FILE).decode("utf-8", errors="replace")
    if not found and not log.endswith(format_final_lines(*(recorded[key] for key in (
            "best_val_accuracy", "best_epoch", "test_accuracy")))):
        found.append(f"the last lines of {LOG_FILE}")
    if found:
        raise FerplusError(
            f"{path}: refused: it does not match what its run recorded (differs in {', '.join(found)}); "
            "delete the folder to train the run again"
        )
    return results


def summarize_runs(accuracies: Dict[str, List[float]]) -> List[dict]:
    """Per mode: runs, mean and sample standard deviation (n − 1) of the test accuracy in percent."""
    rows = []
    for mode, values in accuracies.items():
        values_pct = PERCENT * np.asarray(values, dtype=float)
        paper_mean, paper_std, paper_runs = PAPER_RESULTS[mode]
        rows.append({
            "mode": mode,
            "runs": len(values_pct),
            "mean_test_accuracy": float(values_pct.mean()),
            # One run has no spread to report: None, not a misleading 0.
            "std_test_accuracy": float(values_pct.std(ddof=1)) if len(values_pct) > 1 else None,
            "paper_mean": paper_mean,
            "paper_std": paper_std,
            "paper_runs": paper_runs,
        })
    return rows


def format_csv(rows: Sequence[dict]) -> str:
    """The summary rows as CSV text (accuracies in percent, three decimals)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([
            row["mode"], row["runs"], f"{row['mean_test_accuracy']:.3f}", _optional(row["std_test_accuracy"]),
            f"{row['paper_mean']:.3f}", f"{row['paper_std']:.3f}", row["paper_runs"],
        ])
    return out.getvalue()


def _optional(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.3f}"


def _data_line(base_folder: str, train_images: int) -> str:
    """Which data the runs trained on, with a warning when it is not the full FER+ training split."""
    line = f"Data: `{base_folder}`, {train_images:,} training images."
    if train_images != FERPLUS_TRAIN_IMAGES:
        line += (
            f" **Not the full FER+ training split ({FERPLUS_TRAIN_IMAGES:,} images): the synthetic sample or a"
            " subset, so these figures are not comparable with the paper's.**"
        )
    return line


def _train_images(base_folder: str) -> int:
    """Images listed in the training split's label.csv (one non-blank line each)."""
    label_path = Path(base_folder) / SPLIT_FOLDERS["train"] / LABEL_FILE
    return len(read_label_file(label_path)[1])


def format_markdown(
    rows: Sequence[dict],
    runs: Dict[str, Dict[int, float]],
    model: str,
    epochs: int,
    data_line: str = "",
    unfinished: Sequence[str] = (),
) -> str:
    """The summary as a Markdown table beside the paper's figures, then every run's accuracy,
    then the runs still ``unfinished`` (folder names), if any."""
    total = sum(len(by_seed) for by_seed in runs.values())
    lines = [
        f"# FER+ reproduction: {model}, {epochs} epochs, {total} run{'s' if total != 1 else ''}",
        "",
        *([data_line, ""] if data_line else []),
        "Test accuracy (%) at the best validation epoch: mean ± sample standard deviation over runs"
        " (the mean alone for a single run).",
        "",
        "| mode | runs | this toolkit | paper | paper runs |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        spread = f" ± {row['std_test_accuracy']:.3f}" if row["std_test_accuracy"] is not None else ""
        lines.append(
            f"| {row['mode']} | {row['runs']} | {row['mean_test_accuracy']:.3f}{spread} "
            f"| {row['paper_mean']:.3f} ± {row['paper_std']:.3f} | {row['paper_runs']} |"
        )
    lines += ["", "| mode | seed | test accuracy (%) |", "| --- | ---: | ---: |"]
    for mode, by_seed in runs.items():
        for seed, accuracy in by_seed.items():
            lines.append(f"| {mode} | {seed} | {PERCENT * accuracy:.3f} |")
    if unfinished:
        lines += ["", f"Not finished yet (run again to resume): {', '.join(unfinished)}."]
    return "\n".join(lines) + "\n"


def reproduce(
    base_folder: str,
    seeds: int = 5,
    modes: Sequence[str] = MODES,
    max_epochs: int = 100,
    model: str = "vgg13",
    device: str = "auto",
    output: Optional[str] = None,
    amp: Optional[bool] = None,
    step: str = "auto",
    jobs: int = 1,
    time_budget: Optional[float] = None,
) -> List[dict]:
    """Train every mode with seeds ``0 … seeds−1`` (skipping finished runs, ``jobs`` at a time,
    for at most ``time_budget`` seconds), write the tables of the finished runs, return their rows."""
    deadline = None if time_budget is None else time.time() + time_budget
    root = Path(output) if output else Path(base_folder) / "models" / "reproduce"
    modes = list(dict.fromkeys(modes))  # a mode named twice is one set of runs, not two runs in one folder
    accuracies: Dict[Tuple[str, int], float] = {}
    pending: List[Tuple[Tuple[str, int], TrainConfig]] = []
    for mode in modes:
        for seed in range(seeds):
            folder = run_folder(root, model, mode, seed)
            results = checked_results(folder, max_epochs)
            if results is None:
                resume = (folder / LAST_CHECKPOINT).is_file()
                if not resume and (folder / RESULTS_FILE).exists():  # the trainer would advise its own --resume
                    raise FerplusError(
                        f"{folder}: holds results but no {LAST_CHECKPOINT} to resume from; "
                        "delete the folder to train the run again"
                    )
                config = TrainConfig(
                    base_folder=base_folder, training_mode=mode, max_epochs=max_epochs, seed=seed, device=device,
                    amp=amp, output=str(folder), resume=resume, model=model, step=step,
                )
                pending.append(((mode, seed), config))
            else:
                print(f"== {folder.name}: finished earlier, skipped", flush=True)
                accuracies[mode, seed] = results["test_accuracy"]
    try:
        trained = train_runs([config for _, config in pending], jobs, deadline)
    except KeyboardInterrupt:
        # The trainer's advice names train.py's flags; reproduce resumes every run by itself.
        raise KeyboardInterrupt(f"every finished epoch is kept under {root}") from None
    unfinished = []
    for (key, config), results in zip(pending, trained):
        if results is None:
            unfinished.append(Path(config.output).name)
        else:
            accuracies[key] = results["test_accuracy"]
    runs = {mode: {seed: accuracies[mode, seed] for seed in range(seeds) if (mode, seed) in accuracies} for mode in modes}
    runs = {mode: by_seed for mode, by_seed in runs.items() if by_seed}
    rows = summarize_runs({mode: list(by_seed.values()) for mode, by_seed in runs.items()})
    data_line = _data_line(base_folder, _train_images(base_folder))
    markdown = format_markdown(rows, runs, model, max_epochs, data_line, unfinished)
    atomic_write(root / CSV_FILE, lambda tmp: Path(tmp).write_text(format_csv(rows)))
    atomic_write(root / MARKDOWN_FILE, lambda tmp: Path(tmp).write_text(markdown))
    print(markdown, flush=True)
    return rows
