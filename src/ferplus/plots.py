"""Pictures of a run: training curves and confusion matrices, written as PNG files.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, so
plotting never touches pyplot's global figure registry (no leaked figures in long runs,
no display backend needed on a headless machine).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .fileio import atomic_write
from .labels import EMOTIONS
from .metrics import PERCENT

PathLike = Union[str, os.PathLike]

DPI = 100
CURVES_SIZE = (10.0, 4.0)  # inches: loss and accuracy side by side
CONFUSION_SIZE = (7.0, 6.0)  # inches: square matrix plus the colour bar

# Cell text switches to white on shades darker than this share of the row, so it stays readable.
DARK_SHADE = 0.5


def _save(fig: Figure, path: PathLike) -> None:
    """Render ``fig`` to a PNG at ``path`` atomically (a reader never sees half an image)."""
    canvas = FigureCanvasAgg(fig)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            canvas.print_png(f)

    atomic_write(path, write)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and values of ``key`` over the epochs where it was recorded (not None)."""
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None]
    if not points:
        return np.zeros(0), np.zeros(0)
    epochs, values = zip(*points)
    return np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)


def plot_training_curves(history: Sequence[Mapping[str, Any]], best_epoch: Optional[int], path: PathLike) -> None:
    """Write training loss and accuracies per epoch to a PNG.

    Args:
        history: one dict per epoch with ``epoch``, ``train_loss``, ``train_accuracy``,
            ``val_accuracy`` and ``test_accuracy`` (accuracies as fractions in [0, 1]; any
            value may be None where it was not computed — test accuracy usually is only on
            some epochs, so it is drawn as markers rather than a line).
        best_epoch: the epoch with the best validation accuracy, marked on both panels; None
            leaves it unmarked.
        path: where the PNG goes (folders are created).
    """
    fig = Figure(figsize=CURVES_SIZE, dpi=DPI)
    loss_ax, acc_ax = fig.subplots(1, 2)

    epochs, loss = _series(history, "train_loss")
    loss_ax.plot(epochs, loss, color="tab:blue", marker="." if len(epochs) < 2 else None, label="training loss")
    loss_ax.set_title("Training loss")
    loss_ax.set_ylabel("loss")

    for key, label, color in (
        ("train_accuracy", "training", "tab:blue"),
        ("val_accuracy", "validation", "tab:orange"),
    ):
        epochs, acc = _series(history, key)
        acc_ax.plot(epochs, PERCENT * acc, color=color, marker="." if len(epochs) < 2 else None, label=label)
    epochs, acc = _series(history, "test_accuracy")
    acc_ax.plot(epochs, PERCENT * acc, linestyle="none", marker="o", color="tab:green", label="test")
    acc_ax.set_title("Accuracy")
    acc_ax.set_ylabel("accuracy (%)")

    for ax in (loss_ax, acc_ax):
        if best_epoch is not None:
            label = f"best validation (epoch {best_epoch})"
            ax.axvline(best_epoch, color="tab:red", linestyle="--", linewidth=1, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    _save(fig, path)


def plot_confusion_matrix(confusion: np.ndarray, path: PathLike, title: str = "") -> None:
    """Write an (8, 8) confusion matrix to a PNG: rows true, columns predicted.

    Each cell shows its count; its shade is the count's share of the row (so a class with
    few images is as readable as a big one). Row labels carry the per-class accuracy.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    n = len(EMOTIONS)
    if confusion.shape != (n, n):
        raise ValueError(f"confusion matrix must have shape ({n}, {n}), got {confusion.shape}")
    row_total = confusion.sum(axis=1, keepdims=True)
    shares = np.divide(confusion, row_total, out=np.zeros(confusion.shape), where=row_total > 0)

    fig = Figure(figsize=CONFUSION_SIZE, dpi=DPI)
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    for i in range(n):
        for j in range(n):
            color = "white" if shares[i, j] > DARK_SHADE else "black"
            ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize="small", color=color)

    row_labels = [
        f"{name} ({PERCENT * shares[i, i]:.0f}%)" if row_total[i, 0] else f"{name} (-)"
        for i, name in enumerate(EMOTIONS)
    ]
    ax.set_xticks(range(n), labels=EMOTIONS, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=row_labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (class accuracy)")
    total = int(confusion.sum())
    accuracy = f"{PERCENT * np.trace(confusion) / total:.2f}%" if total else "-"
    heading = f"accuracy {accuracy} on {total} images"
    ax.set_title(f"{title}\n{heading}" if title else heading)
    fig.tight_layout()
    _save(fig, path)
