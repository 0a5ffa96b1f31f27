"""The FER+ label rules and the four training modes: how ten crowd votes become a training target.

Votes are the ten counts of a ``label.csv`` line (or of ``fer2013new.csv``), in
:data:`VOTE_CATEGORIES` order. Every mode first removes outliers (counts of at most one
vote become zero), then picks some categories by its own rule, drops images whose pick is
unusable or dominated by ``unknown``/``NF``, and keeps the picked emotions renormalised.
:data:`MODES` holds one entry per mode: its rule, the target its loss sees, and the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

import numpy as np
import torch.nn.functional as F

from .fer_format import EMOTIONS, NUM_EMOTIONS, NUM_VOTES, VOTE_CATEGORIES
from .settings import MODE_NAMES
from .losses import LossFn, TargetFn, distribution_target, drawn_target, multi_hot_target, multi_target_loss

#: The largest vote count accepted: an image's votes then always add up within int64.
MAX_VOTES = np.iinfo(np.int64).max // NUM_VOTES


#: Validation and test always use ``majority`` labels, whatever the training mode.
EVAL_MODE = "majority"

OUTLIER_MAX_VOTES = 1  # a category with at most this many votes is treated as noise
MAJORITY_SHARE = 0.5  # majority: the top category needs more than this share of the votes
DISTRIBUTION_TARGET_SHARE = 0.75  # crossentropy/probability: keep picking until this share ...
DISTRIBUTION_MAX_PICKED = 3  # ... or this many categories are picked
MULTI_TARGET_SHARE = 0.3  # multi_target: every category with at least this share is a target
MIN_PICKED_SHARE = 0.5  # the picked votes must hold more than this share, else the image is dropped


def _pick_majority(votes: np.ndarray, total: np.ndarray) -> np.ndarray:
    top = votes.argmax(axis=1)
    rows = np.arange(len(votes))
    picked = np.zeros_like(votes)
    wins = votes[rows, top] > MAJORITY_SHARE * total
    picked[rows[wins], top[wins]] = votes[rows[wins], top[wins]]
    return picked


def _pick_distribution(votes: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Take the largest counts pass by pass, ties together, until enough votes are covered.

    A pass scans the categories in order; reaching ``unknown`` or ``NF`` ends everything, and
    that reject stays picked only if nothing else was (so it can drop the image later).
    """
    n = len(votes)
    picked = np.zeros_like(votes)
    remaining = votes.copy()
    picked_sum = np.zeros(n, dtype=np.int64)  # the loop's running sum; an un-pick leaves it as is
    count = np.zeros(n, dtype=np.int64)
    active = (picked_sum < DISTRIBUTION_TARGET_SHARE * total) & (count < DISTRIBUTION_MAX_PICKED)
    while active.any():
        rows = np.flatnonzero(active)
        rem = remaining[rows]
        m = rem.max(axis=1)
        hits = rem == m[:, None]
        # Emotions precede the rejects in scan order, so every tied emotion is picked.
        emotion_hits = hits[:, :NUM_EMOTIONS]
        picked[rows, :NUM_EMOTIONS] = np.where(emotion_hits, m[:, None], picked[rows, :NUM_EMOTIONS])
        remaining[rows, :NUM_EMOTIONS] = np.where(emotion_hits, 0, rem[:, :NUM_EMOTIONS])
        n_hits = emotion_hits.sum(axis=1)
        picked_sum[rows] += m * n_hits
        count[rows] += n_hits
        # The first tied reject (if any) ends the scan and all passes.
        reject_hits = hits[:, NUM_EMOTIONS:]
        reached = reject_hits.any(axis=1)
        r_rows = rows[reached]
        reject = NUM_EMOTIONS + reject_hits[reached].argmax(axis=1)
        r_m = m[reached]
        picked_sum[r_rows] += r_m
        keep_reject = picked[r_rows].sum(axis=1) == 0  # picked total incl. the reject would be just m
        picked[r_rows[keep_reject], reject[keep_reject]] = r_m[keep_reject]
        count[r_rows[keep_reject]] += 1
        active[rows] = (
            ~reached
            & (picked_sum[rows] < DISTRIBUTION_TARGET_SHARE * total[rows])
            & (count[rows] < DISTRIBUTION_MAX_PICKED)
        )
    picked[count > DISTRIBUTION_MAX_PICKED] = 0
    return picked


def _pick_multi_target(votes: np.ndarray, total: np.ndarray) -> np.ndarray:
    return np.where(votes >= MULTI_TARGET_SHARE * total[:, None], votes, 0)


#: A label rule: (outlier-free votes (N, 10), their totals (N,)) → the picked votes (N, 10).
PickFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Mode:
    """One training mode: which votes become the target, what the loss sees of it, and the loss."""

    name: str
    pick: PickFn
    loss_target: TargetFn
    loss: LossFn


#: The training modes by name, in the paper's order.
MODES: Dict[str, Mode] = {
    mode.name: mode
    for mode in (
        Mode("majority", _pick_majority, distribution_target, F.cross_entropy),
        Mode("probability", _pick_distribution, drawn_target, F.cross_entropy),
        Mode("crossentropy", _pick_distribution, distribution_target, F.cross_entropy),
        Mode("multi_target", _pick_multi_target, multi_hot_target, multi_target_loss),
    )
}
assert tuple(MODES) == MODE_NAMES, "settings.MODE_NAMES must list the modes"


def get_mode(name: str) -> Mode:
    """The entry of training mode ``name``; ``ValueError`` naming the choices for an unknown one."""
    if name not in MODES:
        raise ValueError(f"unknown mode {name!r}; choose one of {', '.join(MODES)}")
    return MODES[name]


def process_votes(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn vote counts into per-emotion target distributions under a training mode's rules.

    Args:
        votes: integer array ``(N, 10)`` of non-negative vote counts in :data:`VOTE_CATEGORIES` order.
        mode: one of :data:`MODES`.

    Returns:
        ``(targets, keep)``: ``targets`` float32 ``(N, 8)``, each kept row summing to one and
        dropped rows all zero; ``keep`` bool ``(N,)``, False for images the mode drops.
    """
    pick = get_mode(mode).pick
    votes = np.asarray(votes)
    if votes.ndim != 2 or votes.shape[1] != NUM_VOTES:
        raise ValueError(f"votes must have shape (N, {NUM_VOTES}), got {votes.shape}")
    if votes.dtype.kind == "f" and not np.all(votes == np.round(votes)):
        raise ValueError("votes must be whole numbers")
    votes = votes.astype(np.int64)
    if (votes < 0).any():
        raise ValueError("votes must be non-negative")

    votes = np.where(votes <= OUTLIER_MAX_VOTES, 0, votes)
    total = votes.sum(axis=1)
    picked = pick(votes, total)
    picked_total = picked.sum(axis=1)
    keep = (picked_total > MIN_PICKED_SHARE * total) & (picked_total > 0)
    # An image whose strongest pick is unknown/NF (ties go to the earlier category) is dropped.
    keep &= picked.argmax(axis=1) < NUM_EMOTIONS

    emotion_votes = picked[:, :NUM_EMOTIONS].astype(np.float64)
    targets = np.zeros(emotion_votes.shape, dtype=np.float32)
    targets[keep] = emotion_votes[keep] / emotion_votes[keep].sum(axis=1, keepdims=True)
    return targets, keep


def majority_class(targets: np.ndarray) -> np.ndarray:
    """The emotion index each target row counts as (first index of its maximum)."""
    return np.asarray(targets).argmax(axis=1)
