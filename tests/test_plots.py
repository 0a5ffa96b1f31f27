"""Plots: valid PNG files of the expected size, written atomically, with no pyplot state left behind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ferplus.labels import NUM_EMOTIONS
from ferplus.plots import CONFUSION_SIZE, CURVES_SIZE, DPI, plot_confusion_matrix, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path, figsize) -> None:
    """The file is a decodable PNG of the figure's pixel size, alone in its folder (no temp files left)."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()  # decodes every pixel: a truncated file fails here
        assert image.size == (round(figsize[0] * DPI), round(figsize[1] * DPI))
        # Something was drawn: a blank canvas would have a single colour.
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 10
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def history(epochs: int, test_every: int = 3) -> list[dict]:
    """A plausible training history; test accuracy only on some epochs, as the trainer records it."""
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / (e + 1),
            "train_accuracy": 0.5 + 0.03 * e,
            "val_accuracy": 0.45 + 0.02 * e,
            "test_accuracy": 0.44 + 0.02 * e if e % test_every == 0 else None,
            "lr": 0.05,
            "seconds": 1.0,
        }
        for e in range(epochs)
    ]


@pytest.mark.parametrize("epochs, best_epoch", [(10, 7), (1, 0), (4, None)])
def test_training_curves_png(tmp_path, epochs, best_epoch):
    path = tmp_path / "run" / "curves.png"
    plot_training_curves(history(epochs), best_epoch, path)
    check_png(path, CURVES_SIZE)


def test_training_curves_without_test_accuracy(tmp_path):
    rows = history(5)
    for row in rows:
        row["test_accuracy"] = None
    path = tmp_path / "curves.png"
    plot_training_curves(rows, 2, path)
    check_png(path, CURVES_SIZE)


def test_confusion_matrix_png(tmp_path):
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 40, (NUM_EMOTIONS, NUM_EMOTIONS))
    confusion[np.diag_indices(NUM_EMOTIONS)] += 200
    confusion[-1] = 0  # a class without test images must not break the row shading
    path = tmp_path / "confusion_test.png"
    plot_confusion_matrix(confusion, path, title="vgg13_tiny majority")
    check_png(path, CONFUSION_SIZE)


def test_confusion_matrix_rejects_wrong_shape(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(8, 8\)"):
        plot_confusion_matrix(np.zeros((7, 7)), tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []


def test_plots_leave_no_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_training_curves(history(3), 1, tmp_path / "a.png")
    plot_confusion_matrix(np.eye(NUM_EMOTIONS, dtype=int), tmp_path / "b.png")
    assert plt.get_fignums() == before
