"""Emotions of the faces in photos: one photo read, its faces found (or given) and scored at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np

from ..errors import FerplusError
from ..fer_format import EMOTIONS
from ..fileio import atomic_write
from ..metrics import PERCENT
from ..runtime import ScoreFn
from .faces import crop_faces, detect_faces, face_probabilities, resize_face, to_gray
from .outputs import FacePrediction

#: Files a folder argument contributes as photos (case-insensitive); files named directly are always tried.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
#: Annotated copies keep their image's format when OpenCV can write it, else become PNG.
ANNOTATE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FALLBACK_SUFFIX = ".png"


@dataclass
class ImageResult:
    """What one photo gave: faces, or an error message (unreadable, no face, missing)."""

    path: Path
    faces: List[FacePrediction] = field(default_factory=list)
    error: Optional[str] = None
    #: Where the annotated copy goes, relative to ``--annotate``'s folder.
    output_name: Optional[Path] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return {"path": str(self.path), "faces": [f.to_dict() for f in self.faces], "error": self.error}


def predict_image(
    image: np.ndarray, scorer: ScoreFn, detect: bool = True, boxes: Optional[np.ndarray] = None
) -> List[FacePrediction]:
    """Emotion probabilities for the faces in a BGR (or grayscale) image, scored in one call.

    ``boxes`` (``(N, 4)`` left, top, right, bottom) are scored as given; otherwise, with
    ``detect``, faces are found with the Haar cascade and cropped FER-style, and without it the
    whole image is one face crop (resized to 48×48 if it is not already).
    """
    gray = to_gray(image)
    if boxes is None and not detect:
        height, width = gray.shape
        boxes = np.array([[0, 0, width, height]], dtype=np.int64)
        crops = resize_face(gray)[None]
    else:
        boxes = detect_faces(gray) if boxes is None else boxes
        crops = crop_faces(gray, boxes)
    probabilities = face_probabilities(scorer, crops)
    return [FacePrediction(tuple(int(v) for v in box), p) for box, p in zip(boxes, probabilities)]


def annotated_name(name: Path) -> Path:
    """The name of a photo's annotated copy: its own, in PNG if OpenCV cannot write its format."""
    suffix = name.suffix.lower() if name.suffix.lower() in ANNOTATE_SUFFIXES else FALLBACK_SUFFIX
    return name.with_suffix(suffix)


def write_image(path: Path, image: np.ndarray) -> None:
    """Encode ``image`` in the format of ``path``'s suffix and write it atomically."""
    ok, data = cv2.imencode(path.suffix, image)
    if not ok:
        raise FerplusError(f"{path}: OpenCV cannot write this image format")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data.tobytes()))


def format_result(result: ImageResult) -> str:
    """Readable lines for one image: per face, the box, the top emotion and all eight probabilities."""
    count = len(result.faces)
    lines = [f"{result.path}: {count} face{'s' if count != 1 else ''}"]
    for i, face in enumerate(result.faces, 1):
        left, top, right, bottom = face.box
        top_p = PERCENT * face.probabilities.max()
        where = f"left {left}, top {top}, right {right}, bottom {bottom}"
        lines.append(f"  face {i} at ({where}): {face.emotion} {top_p:.1f}%")
        lines.append("    " + "  ".join(f"{name} {PERCENT * p:.1f}%" for name, p in zip(EMOTIONS, face.probabilities)))
    return "\n".join(lines)
