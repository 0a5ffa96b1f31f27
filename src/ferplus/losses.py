"""What the loss of each FER+ mode sees: the target it is handed, and the loss itself, on raw scores.

``majority``, ``probability`` and ``crossentropy`` all minimise the cross-entropy between a
target distribution and the softmax of the scores (``F.cross_entropy`` with probability
targets); they differ in the target: the vote distribution, or one label drawn from it.
``multi_target`` rewards the network for putting its mass on *any one* of the emotions the
taggers named. The table that pairs them per mode is :data:`ferplus.labels.MODES`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

#: (raw scores (B, 8), loss targets (B, 8)) → mean loss over the batch.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (target distributions (B, 8), generator for any random draw) → what the loss sees (B, 8).
TargetFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

#: multi_target: every emotion with a share gets 1, the rest 0, then smoothed by this much so
#: that the loss's log never sees a hard zero.
MULTI_TARGET_SMOOTHING = 0.001


def distribution_target(targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The vote distribution itself (``majority``: one-hot already; ``crossentropy``)."""
    return targets


def drawn_target(targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One label drawn from each row's distribution, one-hot (``probability``)."""
    drawn = torch.multinomial(targets, 1, generator=generator)
    return torch.zeros_like(targets).scatter_(1, drawn, 1.0)


def multi_hot_target(targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """1 for every emotion with a share, 0 for the others, smoothed (``multi_target``)."""
    return (1 - MULTI_TARGET_SMOOTHING) * (targets > 0).to(targets.dtype) + MULTI_TARGET_SMOOTHING


def multi_target_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``−log max_k (t_k · softmax(z)_k)``.

    Computed as ``−max_k (log t_k + log softmax(z)_k)`` so that a tiny probability never
    underflows to ``log 0``; an entry with ``t_k = 0`` contributes ``−inf`` and simply never wins.
    """
    return -(torch.log(targets) + F.log_softmax(logits, dim=1)).amax(dim=1).mean()
