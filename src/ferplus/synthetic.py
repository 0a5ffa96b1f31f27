"""A synthetic ``fer2013.csv`` + ``fer2013new.csv`` pair, for a first run without the Kaggle download.

The files have exactly the real formats, but the faces are drawn procedurally: an oval face with
eyes, brows and a mouth whose shapes depend on the emotion (a smile, an open "O", a frown, slanted
brows, ...), at a random position, size, brightness and noise level. The features are large and
high-contrast so that a small network learns them even through shifts, rotations and flips.
Each row carries ten votes: usually a clear majority for the drawn emotion, sometimes split over
two or three emotions (dropped by the ``majority`` mode, kept by the others), sometimes mostly
``unknown``/``NF`` (dropped by every mode), so that every training mode has something to do.
A few rows have an empty image name, as in the real FER+ file. It is not FER2013: use it to try
the tools, never to report results.

    python -m ferplus.synthetic OUT_DIR [--per-split N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from .errors import FerplusError, run_cli
from .fer_format import (
    EMOTIONS,
    FER_HEADER,
    FERPLUS_HEADER,
    IMAGE_SIZE,
    NUM_EMOTIONS,
    NUM_TAGGERS,
    NUM_VOTES,
    USAGE_FOLDERS,
    VOTE_CATEGORIES,
)

FER_CSV = "fer2013.csv"
FERPLUS_CSV = "fer2013new.csv"
#: Rows per split by default: enough for the small models to learn visibly within ten epochs.
DEFAULT_PER_SPLIT = 1000
#: FER2013's own ``emotion`` codes for the FER+ emotions it has (it has no contempt).
FER_EMOTION_CODES = {"neutral": 6, "happiness": 3, "surprise": 5, "sadness": 4, "anger": 0, "disgust": 1, "fear": 2}
FER_EMOTIONS = tuple(FER_EMOTION_CODES)
UNKNOWN, NOT_FACE = VOTE_CATEGORIES.index("unknown"), VOTE_CATEGORIES.index("NF")
EMPTY_NAME_EVERY = 50  # one row in this many has no image name, like the 173 of 35,887 in FER+

# How votes spread for a face, in proportions per 20 faces (see _votes).
VOTE_PATTERN = ("clear",) * 12 + ("split",) * 4 + ("multi",) * 2 + ("rejected",) * 2


def write_sample(out_dir: str | Path, per_split: int = DEFAULT_PER_SPLIT, seed: int = 0) -> Tuple[Path, Path]:
    """Write a synthetic ``fer2013.csv`` and ``fer2013new.csv`` into ``out_dir``.

    Args:
        out_dir: folder to write into (created if needed).
        per_split: rows per split (``Training``, ``PublicTest``, ``PrivateTest``); at least
            enough for every emotion to appear in every split.
        seed: the files are a pure function of ``(per_split, seed)``.

    Returns:
        ``(fer_csv_path, ferplus_csv_path)``.
    """
    num_empty = per_split // EMPTY_NAME_EVERY
    if per_split - num_empty < NUM_EMOTIONS:
        raise ValueError(f"per_split must be at least {NUM_EMOTIONS} so that every emotion appears in every split")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fer_lines, ferplus_lines = [FER_HEADER + "\n"], [FERPLUS_HEADER + "\n"]
    row = 0
    for usage in USAGE_FOLDERS:
        num_faces = per_split - num_empty
        emotions = rng.permutation(np.arange(num_faces) % NUM_EMOTIONS)  # every emotion, evenly
        patterns = rng.permutation(np.resize(np.array(VOTE_PATTERN), num_faces))
        empty_rows = set(rng.choice(per_split, size=num_empty, replace=False).tolist())
        faces = iter(zip(emotions, patterns))
        for i in range(per_split):
            if i in empty_rows:
                image = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
                votes = np.zeros(NUM_VOTES, dtype=np.int64)
                votes[NOT_FACE] = NUM_TAGGERS  # what FER+ taggers said of its unnamed rows
                name = ""
            else:
                emotion, pattern = next(faces)
                image = draw_face(EMOTIONS[emotion], rng)
                votes = _votes(int(emotion), str(pattern), rng)
                name = f"fer{row:07d}.png"
            fer_code = FER_EMOTION_CODES[FER_EMOTIONS[int(np.argmax(votes[: len(FER_EMOTIONS)]))]]
            fer_lines.append(f"{fer_code},{' '.join(map(str, image.ravel().tolist()))},{usage}\n")
            ferplus_lines.append(f"{usage},{name},{','.join(map(str, votes.tolist()))}\n")
            row += 1
    fer_path, ferplus_path = out_dir / FER_CSV, out_dir / FERPLUS_CSV
    fer_path.write_text("".join(fer_lines), newline="\n")
    ferplus_path.write_text("".join(ferplus_lines), newline="\n")
    return fer_path, ferplus_path


def _votes(emotion: int, pattern: str, rng: np.random.Generator) -> np.ndarray:
    """Ten votes for a face of ``emotion``, spread by ``pattern``:

    * ``clear``: 7-10 votes for the emotion, the rest scattered (kept by every mode);
    * ``split``: 4 for it, 3 for another emotion, 2 elsewhere (no majority; the other modes keep it);
    * ``multi``: 4, 3 and 3 over three emotions (no majority; the other modes keep it, three-way);
    * ``rejected``: 5-6 votes for ``unknown`` or ``NF`` (every mode drops it).
    """
    votes = np.zeros(NUM_VOTES, dtype=np.int64)
    others = [e for e in range(NUM_EMOTIONS) if e != emotion]
    if pattern == "clear":
        votes[emotion] = rng.integers(7, NUM_TAGGERS + 1)
    elif pattern == "split":
        second = rng.choice(others)
        third = rng.choice([c for c in others + [UNKNOWN, NOT_FACE] if c != second])
        # 2 votes survive the outlier rule, so the total stays 9 and 4 of 9 is no majority.
        votes[[emotion, second, third]] = (4, 3, 2)
    elif pattern == "multi":
        second, third = rng.choice(others, size=2, replace=False)
        votes[[emotion, second, third]] = (4, 3, 3)
    else:
        votes[rng.choice((UNKNOWN, NOT_FACE))] = rng.integers(5, 7)
        votes[emotion] = 3
    # The rest are single stray votes elsewhere (noise that every mode discards).
    free = [c for c in range(NUM_VOTES) if votes[c] == 0]
    remaining = NUM_TAGGERS - int(votes.sum())
    votes[rng.choice(free, size=remaining, replace=False)] = 1
    return votes


# ---------------------------------------------------------------------------------------------
# Drawing

# Face geometry in pixels at scale 1, relative to the face centre (y grows downwards).
FACE_HALF_WIDTH, FACE_HALF_HEIGHT = 15.0, 19.0
EYE_DX, EYE_DY, EYE_RADIUS = 6.5, -4.0, 2.2
BROW_DY, BROW_HALF_LENGTH, BROW_THICKNESS = -9.0, 3.5, 1.3
MOUTH_DY, MOUTH_HALF_WIDTH, LINE_THICKNESS = 8.0, 6.5, 1.4

#: Per emotion: eye size (radii x, y), brow raise and inner-end tilt (+ = inner ends up), mouth shape.
FEATURES: Dict[str, Tuple[Tuple[float, float], float, float, str]] = {
    "neutral": ((2.2, 2.2), 0.0, 0.0, "line"),
    "happiness": ((2.2, 2.0), 0.0, 0.0, "smile"),
    "surprise": ((3.0, 3.0), 3.0, 0.0, "o"),
    "sadness": ((2.2, 2.0), 0.0, 2.5, "frown"),
    "anger": ((2.4, 1.2), -1.0, -3.0, "thick_line"),
    "disgust": ((2.2, 1.2), -1.0, 0.0, "wave"),
    "fear": ((3.0, 3.0), 2.0, 2.5, "wide_open"),
    "contempt": ((2.2, 2.2), 0.0, 0.0, "smirk"),
}


def draw_face(emotion: str, rng: np.random.Generator) -> np.ndarray:
    """A 48×48 uint8 face showing ``emotion`` (one of :data:`~ferplus.labels.EMOTIONS`)."""
    eye_radii, brow_raise, brow_tilt, mouth = FEATURES[emotion]
    scale = rng.uniform(0.85, 1.1)
    cx, cy = IMAGE_SIZE / 2 + rng.uniform(-3, 3, size=2)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float64)
    # Work in face coordinates at scale 1, so the geometry constants above apply directly.
    x, y = (xx - cx) / scale, (yy - cy) / scale

    background = rng.uniform(10, 90)
    skin = min(background + rng.uniform(70, 130), 235)
    ink = max(skin - rng.uniform(110, 160), 0)
    image = np.full((IMAGE_SIZE, IMAGE_SIZE), background)
    image[(x / FACE_HALF_WIDTH) ** 2 + (y / FACE_HALF_HEIGHT) ** 2 <= 1] = skin

    features = np.zeros(image.shape, dtype=bool)
    rx, ry = eye_radii
    for side in (-1, 1):
        features |= ((x - side * EYE_DX) / rx) ** 2 + ((y - EYE_DY) / ry) ** 2 <= 1
        # A brow from its inner end (near the nose) to its outer end; tilt lifts the inner end.
        inner = (side * (EYE_DX - BROW_HALF_LENGTH), BROW_DY - brow_raise - brow_tilt)
        outer = (side * (EYE_DX + BROW_HALF_LENGTH), BROW_DY - brow_raise)
        features |= _segment_distance(x, y, inner, outer) <= BROW_THICKNESS
    features |= _mouth(mouth, x, y - MOUTH_DY)
    image[features] = ink

    image += rng.normal(0, rng.uniform(2, 10), size=image.shape)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def _segment_distance(x: np.ndarray, y: np.ndarray, p0: Tuple[float, float], p1: Tuple[float, float]) -> np.ndarray:
    """Distance of every pixel to the segment ``p0``–``p1``."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(x - (x0 + t * dx), y - (y0 + t * dy))


def _mouth(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask of the mouth, in coordinates centred on it."""
    if shape == "o":
        return (x / 3.2) ** 2 + (y / 4.0) ** 2 <= 1
    if shape == "wide_open":
        return (x / MOUTH_HALF_WIDTH) ** 2 + (y / 3.0) ** 2 <= 1
    t = x / MOUTH_HALF_WIDTH  # -1 .. 1 across the mouth
    curve = {
        "line": 0 * t,
        "thick_line": 0 * t,
        "smile": 3.0 * (0.5 - t**2),  # corners up (y grows downwards)
        "frown": -3.0 * (0.5 - t**2),  # corners down
        "wave": 1.6 * np.sin(2.5 * np.pi * t),
        "smirk": -4.0 * np.clip(t, 0, None) ** 2,  # one corner pulled up
    }[shape]
    thickness = 2.4 if shape == "thick_line" else LINE_THICKNESS
    return (np.abs(t) <= 1) & (np.abs(y - curve) <= thickness)


# ---------------------------------------------------------------------------------------------
# Command line


def get_args_parser() -> argparse.ArgumentParser:
    """Flags of ``python -m ferplus.synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m ferplus.synthetic",
        description="Write a synthetic fer2013.csv + fer2013new.csv pair (procedural faces, not FER2013).",
    )
    parser.add_argument("out_dir", type=Path, help="folder to write the two CSV files into")
    parser.add_argument(
        "--per-split", type=int, default=DEFAULT_PER_SPLIT, help=f"rows per split (default {DEFAULT_PER_SPLIT})"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def main(args: argparse.Namespace) -> None:
    """Write the sample and say where it went."""
    try:
        paths: List[Path] = list(write_sample(args.out_dir, args.per_split, args.seed))
    except ValueError as e:
        raise FerplusError(str(e)) from None
    print(f"wrote a synthetic sample (procedural faces, not FER2013): {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser()))
