"""The paper's results table in one command: every mode trained with several seeds, then summarised.

Each run lives in ``<root>/<model folder>_<mode>_seed<k>/`` (``root`` defaults to
``<data>/models/reproduce``). A run whose ``results.json`` already covers the requested number
of epochs is skipped; one with a ``last.pt`` is resumed; the rest start fresh. The summary goes
to ``reproduce.md`` and ``reproduce.csv`` in ``root``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .checkpoint import atomic_write
from .engine import LAST_CHECKPOINT, TrainConfig, finished_results, run_folder_name, train
from .labels import MODES
from .metrics import PERCENT

#: Test accuracy (%) of the paper's Table 2: (mean, standard deviation, runs) per mode.
PAPER_RESULTS = {
    "majority": (83.852, 0.631, 5),
    "multi_target": (83.966, 0.362, 5),
    "probability": (84.986, 0.366, 5),
    "crossentropy": (84.716, 0.239, 5),
}
CSV_FILE = "reproduce.csv"
MARKDOWN_FILE = "reproduce.md"
CSV_COLUMNS = ("mode", "runs", "mean_test_accuracy", "std_test_accuracy", "paper_mean", "paper_std", "paper_runs")


def run_folder(root: Path, model: str, mode: str, seed: int) -> Path:
    """The folder of one (mode, seed) run."""
    return root / f"{run_folder_name(model, mode)}_seed{seed}"


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
            "std_test_accuracy": float(values_pct.std(ddof=1)) if len(values_pct) > 1 else 0.0,
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
            row["mode"], row["runs"], f"{row['mean_test_accuracy']:.3f}", f"{row['std_test_accuracy']:.3f}",
            f"{row['paper_mean']:.3f}", f"{row['paper_std']:.3f}", row["paper_runs"],
        ])
    return out.getvalue()


def format_markdown(rows: Sequence[dict], runs: Dict[str, Dict[int, float]], model: str, epochs: int) -> str:
    """The summary as a Markdown table beside the paper's figures, then every run's accuracy."""
    lines = [
        f"# FER+ reproduction: {model}, {epochs} epochs",
        "",
        "Test accuracy (%) at the best validation epoch: mean ± sample standard deviation over runs.",
        "",
        "| mode | runs | this toolkit | paper | paper runs |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['mode']} | {row['runs']} | {row['mean_test_accuracy']:.3f} ± {row['std_test_accuracy']:.3f} "
            f"| {row['paper_mean']:.3f} ± {row['paper_std']:.3f} | {row['paper_runs']} |"
        )
    lines += ["", "| mode | seed | test accuracy (%) |", "| --- | ---: | ---: |"]
    for mode, by_seed in runs.items():
        for seed, accuracy in by_seed.items():
            lines.append(f"| {mode} | {seed} | {PERCENT * accuracy:.3f} |")
    return "\n".join(lines) + "\n"


def reproduce(
    base_folder: str,
    seeds: int = 5,
    modes: Sequence[str] = MODES,
    max_epochs: int = 100,
    model: str = "vgg13",
    device: str = "auto",
    output: Optional[str] = None,
    amp: bool = False,
) -> List[dict]:
    """Train every mode with seeds ``0 … seeds−1`` (skipping finished runs), write the tables, return their rows."""
    root = Path(output) if output else Path(base_folder) / "models" / "reproduce"
    runs: Dict[str, Dict[int, float]] = {}
    for mode in modes:
        runs[mode] = {}
        for seed in range(seeds):
            folder = run_folder(root, model, mode, seed)
            results = finished_results(folder, max_epochs)
            if results is None:
                print(f"== {folder.name}: training", flush=True)
                config = TrainConfig(
                    base_folder=base_folder, training_mode=mode, max_epochs=max_epochs, seed=seed, device=device,
                    amp=amp, output=str(folder), resume=(folder / LAST_CHECKPOINT).is_file(), model=model,
                )
                results = train(config)
            else:
                print(f"== {folder.name}: finished earlier, skipped", flush=True)
            runs[mode][seed] = results["test_accuracy"]
    rows = summarize_runs({mode: list(by_seed.values()) for mode, by_seed in runs.items()})
    markdown = format_markdown(rows, runs, model, max_epochs)
    atomic_write(root / CSV_FILE, lambda tmp: Path(tmp).write_text(format_csv(rows)))
    atomic_write(root / MARKDOWN_FILE, lambda tmp: Path(tmp).write_text(markdown))
    print(markdown, flush=True)
    return rows
