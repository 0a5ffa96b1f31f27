"""Pictures of predictions: faces drawn onto photos and video frames, and a video's timeline.

Sizes are relative to the face box, so that labels stay legible on any photo or frame size.
matplotlib is imported only when a timeline is drawn.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Tuple, Union

import cv2
import numpy as np

from ..fer_format import EMOTIONS
from ..fileio import atomic_write
from ..metrics import PERCENT
from .outputs import FacePrediction

PathLike = Union[str, os.PathLike]

BOX_COLOR = (0, 200, 0)  # BGR
TEXT_COLOR = (0, 0, 0)
BAR_BACKGROUND = (40, 40, 40)
LINE_FRACTION = 0.015  # line thickness as a share of the box side
TEXT_FRACTION = 0.004  # font scale per pixel of box side
MIN_FONT_SCALE = 0.4
FONT = cv2.FONT_HERSHEY_SIMPLEX
#: The probability bar under a box: eight columns, as tall as this share of the box side.
BAR_FRACTION = 0.25
MIN_BAR_HEIGHT = 8
#: One colour per emotion (BGR), shared by the bar and, as RGB, the timeline.
EMOTION_COLORS = (
    (160, 160, 160), (0, 200, 255), (255, 200, 0), (200, 80, 0),
    (0, 0, 230), (0, 140, 70), (200, 0, 200), (100, 60, 140),
)
TIMELINE_WIDTH = 10.0  # inches
TIMELINE_ROW_HEIGHT = 2.0  # inches per track
#: Tracks drawn in a timeline at most (the longest ones), so that a crowded clip stays readable.
TIMELINE_MAX_TRACKS = 8
DPI = 100
#: A track unseen for more than this many of its usual steps between frames has a gap in its lines.
GAP_STEPS = 2.0


def annotate(image: np.ndarray, faces: Iterable[FacePrediction]) -> np.ndarray:
    """A BGR copy of ``image`` with each face's box, ``#track emotion NN%`` label and probability bar drawn."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    for face in faces:
        left, top, right, bottom = face.box
        side = max(right - left, bottom - top)
        thickness = max(1, round(LINE_FRACTION * side))
        scale = max(MIN_FONT_SCALE, TEXT_FRACTION * side)
        track = "" if face.track is None else f"#{face.track} "
        text = f"{track}{face.emotion} {PERCENT * face.probabilities.max():.0f}%"
        cv2.rectangle(out, (left, top), (right, bottom), BOX_COLOR, thickness)
        (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
        label_h = text_h + baseline + thickness
        # Label above the box, or inside its top edge when the box touches the image's top.
        label_top = top - label_h if top >= label_h else top
        label_corner = (left + text_w + 2 * thickness, label_top + label_h)
        cv2.rectangle(out, (left, label_top), label_corner, BOX_COLOR, cv2.FILLED)
        text_origin = (left + thickness, label_top + text_h + thickness // 2)
        cv2.putText(out, text, text_origin, FONT, scale, TEXT_COLOR, thickness, cv2.LINE_AA)
        _draw_bar(out, face, side)
    return out


def _draw_bar(out: np.ndarray, face: FacePrediction, side: int) -> None:
    """Eight columns under the box (above its bottom edge when it touches the image's bottom),
    each as tall as its emotion's probability."""
    left, _, right, bottom = face.box
    height = max(MIN_BAR_HEIGHT, round(BAR_FRACTION * side))
    bar_top = bottom if bottom + height <= out.shape[0] else bottom - height
    column = max(1, (right - left) // len(EMOTIONS))
    cv2.rectangle(out, (left, bar_top), (left + column * len(EMOTIONS), bar_top + height), BAR_BACKGROUND, cv2.FILLED)
    for k, (p, color) in enumerate(zip(face.probabilities, EMOTION_COLORS)):
        filled = int(round(float(p) * height))
        if filled:
            x = left + k * column
            cv2.rectangle(out, (x, bar_top + height - filled), (x + column - 1, bar_top + height), color, cv2.FILLED)


def write_timeline(
    path: PathLike, title: str, series: Dict[int, Tuple[List[float], List[np.ndarray]]]
) -> None:
    """Write a PNG with one panel per track: its eight probabilities over time (``series``: track
    → times in seconds, probabilities). The longest :data:`TIMELINE_MAX_TRACKS` tracks are drawn."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the only user of matplotlib here
    from matplotlib.figure import Figure

    tracks = sorted(series, key=lambda t: -len(series[t][0]))[:TIMELINE_MAX_TRACKS]
    tracks.sort()
    rows = max(1, len(tracks))
    figure = Figure(figsize=(TIMELINE_WIDTH, TIMELINE_ROW_HEIGHT * rows + 0.6), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    colors = [tuple(c / 255 for c in reversed(bgr)) for bgr in EMOTION_COLORS]
    for ax, track in zip(axes, tracks):
        times, values = _broken_at_gaps(*series[track])
        for k, name in enumerate(EMOTIONS):
            ax.plot(times, values[:, k], ".-" if len(times) < 3 else "-", color=colors[k], label=name, linewidth=1.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {track}")
        ax.grid(alpha=0.3)
    if not tracks:
        axes[0].text(0.5, 0.5, "no faces found", ha="center", va="center", transform=axes[0].transAxes)
    axes[0].set_title(title)
    axes[-1].set_xlabel("time (s)")
    if tracks:
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def _broken_at_gaps(times: List[float], probabilities: List[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The series with a NaN row inserted wherever the track went unseen for over twice its usual
    step, so that the lines break there instead of bridging the gap."""
    times_array = np.asarray(times, dtype=np.float64)
    values = np.asarray(probabilities, dtype=np.float64).reshape(-1, len(EMOTIONS))
    if len(times_array) < 3:
        return times_array, values
    steps = np.diff(times_array)
    gaps = np.flatnonzero(steps > GAP_STEPS * np.median(steps)) + 1
    return np.insert(times_array, gaps, np.nan), np.insert(values, gaps, np.nan, axis=0)

