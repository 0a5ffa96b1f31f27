"""The training losses of the four FER+ modes, on raw network scores.

``majority``, ``probability`` and ``crossentropy`` all minimise the cross-entropy between the
target distribution and the softmax of the scores (they differ only in the targets the reader
hands over); ``multi_target`` rewards the network for putting its mass on *any one* of the
emotions the taggers named.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .labels import check_mode

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−Σ_k t_k · log softmax(z)_k``.

    Args:
        logits: raw scores ``(B, K)``.
        targets: target distributions (or one-hot rows) ``(B, K)``.
    """
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def multi_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−log max_k (t_k · softmax(z)_k)``.

    Computed as ``−max_k (log t_k + log softmax(z)_k)`` so that a tiny probability never
    underflows to ``log 0``; an entry with ``t_k = 0`` contributes ``−inf`` and simply never wins.
    """
    return -(torch.log(targets) + F.log_softmax(logits, dim=1)).amax(dim=1).mean()


_LOSSES = {
    "majority": soft_cross_entropy,
    "probability": soft_cross_entropy,
    "crossentropy": soft_cross_entropy,
    "multi_target": multi_target_loss,
}


def loss_for_mode(mode: str) -> LossFn:
    """The loss function a training mode minimises (``ValueError`` for an unknown mode)."""
    return _LOSSES[check_mode(mode)]
