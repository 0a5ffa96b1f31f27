"""Classification metrics over the eight emotions: what a confusion matrix summarises to, and its table."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

from .fer_format import EMOTIONS, NUM_EMOTIONS

PERCENT = 100.0  # fractions are stored, percentages shown


def summarize(confusion: np.ndarray) -> Dict[str, Any]:
    """Accuracy, per-class accuracy (None for a class with no images) and the matrix, JSON-ready."""
    confusion = np.asarray(confusion, dtype=np.int64)
    per_class_total = confusion.sum(axis=1)
    total = int(per_class_total.sum())
    return {
        "accuracy": float(np.trace(confusion) / total) if total else 0.0,
        "num_images": total,
        "per_class_accuracy": {
            name: (float(confusion[i, i] / per_class_total[i]) if per_class_total[i] else None)
            for i, name in enumerate(EMOTIONS)
        },
        "confusion_matrix": confusion.tolist(),
    }


def format_confusion(confusion: np.ndarray) -> str:
    """A plain-text table of the matrix (rows true, columns predicted) with per-class accuracy."""
    confusion = np.asarray(confusion, dtype=np.int64)
    # Columns wide enough for every class name and count: a table never truncates a name.
    width = max(len(str(int(confusion.max(initial=0)))), *map(len, EMOTIONS)) + 2
    lines = ["true \\ pred".ljust(12) + "".join(name.rjust(width) for name in EMOTIONS) + "  accuracy".rjust(10)]
    for i, name in enumerate(EMOTIONS):
        row_total = confusion[i].sum()
        acc = f"{100 * confusion[i, i] / row_total:.2f}%" if row_total else "-"
        lines.append(name.ljust(12) + "".join(str(v).rjust(width) for v in confusion[i]) + acc.rjust(10))
    total = confusion.sum()
    overall = f"{100 * np.trace(confusion) / total:.2f}%" if total else "-"
    lines.append("overall".ljust(12) + " " * (width * NUM_EMOTIONS) + overall.rjust(10))
    return "\n".join(lines)
