"""Running a network on preprocessed crops: the device, batched scoring, and the confusion matrix.

The light core that the trainer, the evaluator and prediction share; it needs only torch.
"""

from __future__ import annotations

from typing import Callable, Iterable, Tuple

import torch
from torch import nn

from .errors import FerplusError
from .fer_format import NUM_EMOTIONS
from .settings import EVAL_BATCH_SIZE

#: Preprocessed crops (N, 1, 64, 64) → raw scores (N, 8), both torch tensors.
ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda`` into a device; asking for CUDA without a GPU is a :class:`FerplusError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise FerplusError("--device cuda: no CUDA GPU is available (use --device cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise FerplusError(f"--device {name}: choose auto, cpu or cuda")
    return torch.device(name)


def predict_scores(model: nn.Module, inputs: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Raw scores ``(N, classes)`` float32 of preprocessed ``inputs``, in eval mode and without gradients.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        scores = [model(inputs[start:start + batch_size]).float() for start in range(0, len(inputs), batch_size)]
    model.train(was_training)
    if not scores:
        return inputs.new_zeros((0, NUM_EMOTIONS))
    return torch.cat(scores)


def confusion_matrix(score: ScoreFn, batches: Iterable[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The (8, 8) int64 confusion counts of ``score`` over ``(inputs, labels)`` batches.

    Rows are true classes, columns predicted ones. Counts accumulate on the labels' device by a
    scatter-add (``bincount`` would read its input's min and max on the host, two syncs per
    batch), so scoring on a GPU never waits for the host; the matrix is on that device.
    """
    confusion = None
    for inputs, labels in batches:
        predicted = score(inputs).argmax(dim=1).to(labels.device)
        if confusion is None:
            confusion = torch.zeros(NUM_EMOTIONS**2, dtype=torch.int64, device=labels.device)
        confusion.scatter_add_(0, labels * NUM_EMOTIONS + predicted, torch.ones_like(labels))
    if confusion is None:
        return torch.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=torch.int64)
    return confusion.view(NUM_EMOTIONS, NUM_EMOTIONS)
