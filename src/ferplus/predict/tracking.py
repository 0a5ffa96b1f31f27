"""Faces followed through a video: boxes matched frame to frame by overlap, and scores smoothed over time.

A track is one face while it stays in view. Each sampled frame's boxes are matched to the live
tracks by intersection over union, greedily from the best overlap down; a box that matches no
track starts a new one, and a track that finds no box is kept for :data:`MAX_MISSED` sampled
frames, so that a face survives a few frames the detector misses (a blink, a turn, a hand).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, List, Tuple

import numpy as np

#: Two boxes of one face in consecutive sampled frames overlap at least this much.
MIN_IOU = 0.3
#: Sampled frames a track may go without a box before it ends.
MAX_MISSED = 10


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box in ``a`` ``(N, 4)`` with every box in ``b`` ``(M, 4)``: ``(N, M)``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    width = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    height = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = width * height
    area = lambda box: (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class Track:
    """A followed face: its id, its last box and how many sampled frames it has gone unseen."""

    id: int
    box: np.ndarray
    missed: int = 0


class Tracker:
    """Gives each face box a track id that stays the same while the face stays in view."""

    def __init__(self, min_iou: float = MIN_IOU, max_missed: int = MAX_MISSED) -> None:
        self.min_iou = min_iou
        self.max_missed = max_missed
        self.tracks: List[Track] = []
        self._next_id = 1

    def update(self, boxes: np.ndarray) -> List[int]:
        """Match one sampled frame's boxes ``(N, 4)`` to the tracks; returns each box's track id."""
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        ids = [0] * len(boxes)
        overlap = box_iou(np.array([t.box for t in self.tracks]), boxes) if self.tracks else np.zeros((0, len(boxes)))
        matched_tracks = set()
        # Greedy from the best overlap down: with faces far apart, as they are, this is the optimum.
        for flat in np.argsort(-overlap, axis=None, kind="stable"):
            t, b = np.unravel_index(flat, overlap.shape)
            if overlap[t, b] < self.min_iou:
                break
            if t in matched_tracks or ids[b]:
                continue
            matched_tracks.add(t)
            ids[b] = self.tracks[t].id
            self.tracks[t].box, self.tracks[t].missed = boxes[b], 0
        for t, track in enumerate(self.tracks):
            if t not in matched_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        for b, box in enumerate(boxes):
            if not ids[b]:
                ids[b] = self._next_id
                self.tracks.append(Track(self._next_id, box))
                self._next_id += 1
        return ids


class Smoother:
    """Each track's probabilities averaged over a trailing window of ``seconds`` (0: raw scores)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._history: Dict[int, Deque[Tuple[float, np.ndarray]]] = {}

    def __call__(self, track: int, time_s: float, probabilities: np.ndarray) -> np.ndarray:
        """The mean of ``track``'s probabilities over ``(time_s - seconds, time_s]``, this frame's included."""
        if self.seconds <= 0:
            return probabilities
        history = self._history.setdefault(track, deque())
        history.append((time_s, probabilities))
        while history[0][0] <= time_s - self.seconds:
            history.popleft()
        return np.mean([p for _, p in history], axis=0)
