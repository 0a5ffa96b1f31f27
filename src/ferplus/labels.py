"""The FER+ label rules: how ten crowd votes become a training target, for each training mode.

Votes are the ten counts of a ``label.csv`` line (or of ``fer2013new.csv``), in
:data:`VOTE_CATEGORIES` order. Every mode first removes outliers (counts of at most one
vote become zero), then picks some categories by its own rule, drops images whose pick is
unusable or dominated by ``unknown``/``NF``, and keeps the picked emotions renormalised.
"""

from __future__ import annotations

import numpy as np

#: The eight emotions a network predicts, in output order.
EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
#: The ten vote columns of ``fer2013new.csv`` and ``label.csv``: the emotions, then two rejects.
VOTE_CATEGORIES = EMOTIONS + ("unknown", "NF")
NUM_EMOTIONS = len(EMOTIONS)
NUM_VOTES = len(VOTE_CATEGORIES)
#: The largest vote count accepted: an image's votes then always add up within int64.
MAX_VOTES = np.iinfo(np.int64).max // NUM_VOTES

#: Training modes; validation and test always use ``majority`` labels.
MODES = ("majority", "probability", "crossentropy", "multi_target")
EVAL_MODE = "majority"

OUTLIER_MAX_VOTES = 1  # a category with at most this many votes is treated as noise
MAJORITY_SHARE = 0.5  # majority: the top category needs more than this share of the votes
DISTRIBUTION_TARGET_SHARE = 0.75  # crossentropy/probability: keep picking until this share ...
DISTRIBUTION_MAX_PICKED = 3  # ... or this many categories are picked
MULTI_TARGET_SHARE = 0.3  # multi_target: every category with at least this share is a target
MIN_PICKED_SHARE = 0.5  # the picked votes must hold more than this share, else the image is dropped


def check_mode(mode: str) -> str:
    """Return ``mode`` if it is a known training mode, else raise ``ValueError`` naming the choices."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    return mode


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


_PICKERS = {
    "majority": _pick_majority,
    "probability": _pick_distribution,
    "crossentropy": _pick_distribution,
    "multi_target": _pick_multi_target,
}


def process_votes(votes: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn vote counts into per-emotion target distributions under a training mode's rules.

    Args:
        votes: integer array ``(N, 10)`` of non-negative vote counts in :data:`VOTE_CATEGORIES` order.
        mode: one of :data:`MODES`.

    Returns:
        ``(targets, keep)``: ``targets`` float32 ``(N, 8)``, each kept row summing to one and
        dropped rows all zero; ``keep`` bool ``(N,)``, False for images the mode drops.
    """
    check_mode(mode)
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
    picked = _PICKERS[mode](votes, total)
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
