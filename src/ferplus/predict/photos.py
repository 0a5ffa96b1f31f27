"""Predicting the emotions of faces in photos: the work behind ``predict.py``.

Faces are found and cropped by :mod:`ferplus.faces` and scored by a checkpoint or an ONNX
file alike (:func:`ferplus.scorers.load_scorer`); results are printed, as text or JSON, and
drawn onto copies of the images.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, TextIO, Tuple, Union

import cv2
import numpy as np
import torch

from ..errors import FerplusError
from .faces import crop_faces, detect_faces, face_inputs, read_image, resize_face, to_gray
from ..fer_format import EMOTIONS
from ..fileio import atomic_write
from ..metrics import PERCENT
from ..runtime import ScoreFn
from ..scorers import load_scorer

PathLike = Union[str, os.PathLike]

#: Files a folder argument contributes (case-insensitive); files named directly are always tried.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
#: Annotated copies keep their image's format when OpenCV can write it, else become PNG.
ANNOTATE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
FALLBACK_SUFFIX = ".png"

# Annotation drawing, relative to the face box so labels stay legible on any photo size.
BOX_COLOR = (0, 200, 0)  # BGR
TEXT_COLOR = (0, 0, 0)
LINE_FRACTION = 0.015  # line thickness as a share of the box side
TEXT_FRACTION = 0.004  # font scale per pixel of box side
MIN_FONT_SCALE = 0.4
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class FacePrediction:
    """One face: its box (left, top, right, bottom) in image pixels and the emotion probabilities."""

    box: Tuple[int, int, int, int]
    probabilities: np.ndarray  # (8,) in EMOTIONS order

    @property
    def emotion(self) -> str:
        """The most probable emotion."""
        return EMOTIONS[int(np.argmax(self.probabilities))]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return {
            "box": dict(zip(("left", "top", "right", "bottom"), (int(v) for v in self.box))),
            "emotion": self.emotion,
            "probabilities": {name: float(p) for name, p in zip(EMOTIONS, self.probabilities)},
        }


@dataclass
class ImageResult:
    """What one input path gave: faces, or an error message (unreadable, no face, missing)."""

    path: Path
    faces: List[FacePrediction] = field(default_factory=list)
    error: Optional[str] = None
    #: Where the annotated copy goes, relative to ``--annotate``'s folder.
    output_name: Optional[Path] = None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return {"path": str(self.path), "faces": [f.to_dict() for f in self.faces], "error": self.error}


def find_images(paths: Sequence[PathLike]) -> List[ImageResult]:
    """Expand files and folders (recursively, image suffixes only, sorted) into pending results.

    A path that does not exist or is not a regular file, or a folder without images, becomes a
    result carrying an error.
    """
    found: List[ImageResult] = []
    for arg in map(Path, paths):
        if arg.is_dir():
            images = sorted(p for p in arg.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                found.append(ImageResult(arg, error=f"{arg}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})"))
            # Keep the folder's own name and layout, so same-named images in subfolders stay apart.
            found += [ImageResult(p, output_name=Path(arg.resolve().name) / p.relative_to(arg)) for p in images]
        elif arg.is_file():
            found.append(ImageResult(arg, output_name=Path(arg.name)))
        elif arg.exists():  # a FIFO or a device: reading it could wait forever
            found.append(ImageResult(arg, error=f"{arg}: not a regular file"))
        else:
            found.append(ImageResult(arg, error=f"{arg}: no such file or folder"))
    return found


def predict_image(image: np.ndarray, scorer: ScoreFn, detect: bool = True) -> List[FacePrediction]:
    """Emotion probabilities for the faces in a BGR (or grayscale) image.

    With ``detect``, faces are found with the Haar cascade and cropped FER-style; without, the
    whole image is one face crop (resized to 48×48 if it is not already).
    """
    gray = to_gray(image)
    if detect:
        boxes = detect_faces(gray)
        if not len(boxes):
            return []
        crops = crop_faces(gray, boxes)
    else:
        height, width = gray.shape
        boxes = np.array([[0, 0, width, height]], dtype=np.int64)
        crops = resize_face(gray)[None]
    scores = scorer(torch.from_numpy(face_inputs(crops)))
    probabilities = torch.softmax(scores.double(), dim=1).cpu().numpy()  # float64: sums to one
    return [FacePrediction(tuple(int(v) for v in box), p) for box, p in zip(boxes, probabilities)]


def annotate(image: np.ndarray, faces: Iterable[FacePrediction]) -> np.ndarray:
    """A BGR copy of ``image`` with each face's box and ``emotion NN%`` label drawn."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    for face in faces:
        left, top, right, bottom = face.box
        side = max(right - left, bottom - top)
        thickness = max(1, round(LINE_FRACTION * side))
        scale = max(MIN_FONT_SCALE, TEXT_FRACTION * side)
        text = f"{face.emotion} {PERCENT * face.probabilities.max():.0f}%"
        cv2.rectangle(out, (left, top), (right, bottom), BOX_COLOR, thickness)
        (text_w, text_h), baseline = cv2.getTextSize(text, FONT, scale, thickness)
        label_h = text_h + baseline + thickness
        # Label above the box, or inside its top edge when the box touches the image's top.
        label_top = top - label_h if top >= label_h else top
        label_corner = (left + text_w + 2 * thickness, label_top + label_h)
        cv2.rectangle(out, (left, label_top), label_corner, BOX_COLOR, cv2.FILLED)
        text_origin = (left + thickness, label_top + text_h + thickness // 2)
        cv2.putText(out, text, text_origin, FONT, scale, TEXT_COLOR, thickness, cv2.LINE_AA)
    return out


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


def predict_images(
    model_path: PathLike,
    paths: Sequence[PathLike],
    device: Union[str, torch.device] = "cpu",
    detect: bool = True,
    as_json: bool = False,
    annotate_dir: Optional[PathLike] = None,
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> List[ImageResult]:
    """Predict emotions for every image in ``paths`` (files or folders) and report as it goes.

    Readable results go to ``out`` (one JSON document at the end with ``as_json``); a missing
    or unreadable file, or an image without a face, gets a one-line message on ``err`` and the
    other images go on. With ``annotate_dir``, every image with faces is written there with
    boxes and labels drawn. Returns every result; failed ones carry ``error``.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    scorer, info = load_scorer(model_path, device)
    results = find_images(paths)
    written: set = set()
    for result in results:
        if result.error is None:
            try:
                image = read_image(result.path)
            except FerplusError as e:
                result.error = str(e)
            else:
                result.faces = predict_image(image, scorer, detect)
                if not result.faces:
                    result.error = f"{result.path}: no face found (use --no-detect if the image is a face crop)"
                elif annotate_dir is not None:
                    target = _annotation_path(Path(annotate_dir), result, written)
                    write_image(target, annotate(image, result.faces))
        if result.error is not None:
            print(f"warning: {result.error}", file=err)
        elif not as_json:
            print(format_result(result), file=out)
    if as_json:
        json.dump({"model": info, "images": [r.to_dict() for r in results]}, out, indent=2)
        out.write("\n")
    return results


def _annotation_path(folder: Path, result: ImageResult, written: set) -> Path:
    """A fresh path under ``folder`` for ``result``'s annotated copy (``-2``, ``-3`` … on clashes)."""
    name = result.output_name or Path(result.path.name)
    suffix = name.suffix.lower() if name.suffix.lower() in ANNOTATE_SUFFIXES else FALLBACK_SUFFIX
    target = folder / name.with_suffix(suffix)
    number = 1
    while target in written:
        number += 1
        target = folder / name.with_name(f"{name.stem}-{number}{suffix}")
    written.add(target)
    return target
