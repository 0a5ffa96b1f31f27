"""Faces in photos: reading images, finding faces with OpenCV's Haar cascade, cutting FER-like crops.

A crop is made the way FER2013's faces look: a square around the detected face with a small
margin, grayscale, resized to FER's 48×48 pixels; it then goes through the same evaluation
preprocessing as a FER image (:func:`ferplus.transforms.preprocess` with the whole-crop box).
The detector's weights ship inside OpenCV (``cv2.data.haarcascades``); nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch

from ..errors import FerplusError
from ..fer_format import IMAGE_SIZE, NUM_EMOTIONS
from ..images import UnreadableImage, native_stderr_silenced, read_image_file
from ..runtime import ScoreFn
from ..transforms import preprocess

PathLike = Union[str, os.PathLike]

CASCADE_FILE = "haarcascade_frontalface_default.xml"
#: FER2013 faces are 48×48; crops are brought to this size so a photo's face has the resolution
#: (and, after preprocessing, the blur) of the images the network was trained on.
FACE_SIZE = IMAGE_SIZE
#: Margin added on each side of the detector's square box, as a share of its side. On 300
#: FER2013 test faces (upscaled into a canvas) the cascade's box covered a median 97% of the
#: FER crop, centred, so 2% per side reproduces FER's framing.
CROP_MARGIN = 0.02
# Detector settings: the usual scale step, and enough neighbouring hits to reject most false
# positives; faces smaller than MIN_FACE pixels are too small to classify anyway.
SCALE_FACTOR = 1.1
MIN_NEIGHBORS = 5
MIN_FACE = 24
#: Larger photos are searched for faces on a copy shrunk to this side: the cascade's memory
#: (about 50 bytes a pixel) and time grow with the pixels searched, and a face that is still
#: MIN_FACE pixels wide at this scale is found all the same.
DETECT_MAX_SIDE = 2048
#: Between full searches (video), a tracked face is looked for within this many of its box's
#: sides around it, at sizes within this factor of its box: faces move and turn little from one
#: sampled frame to the next.
NEAR_REACH = 1.0
NEAR_SIZE = 1.4
#: Fewer neighbouring hits are asked for there: the window is small, its border cuts off some of
#: a face's hits, and a face was just seen at that place and size.
NEAR_NEIGHBORS = 3


@functools.lru_cache(maxsize=1)
def load_detector() -> cv2.CascadeClassifier:
    """OpenCV's frontal-face Haar cascade; :class:`FerplusError` if this OpenCV does not ship it."""
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder is None:
        raise FerplusError(
            f"OpenCV {cv2.__version__} ships no Haar cascades (cv2.data.haarcascades); "
            "install opencv-python-headless 4.x, or use --no-detect on face crops"
        )
    path = Path(folder) / CASCADE_FILE
    detector = cv2.CascadeClassifier(str(path))
    if detector.empty():
        raise FerplusError(
            f"{path}: OpenCV's face cascade is missing or unreadable; reinstall opencv-python-headless 4.x"
        )
    return detector


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as 8-bit BGR ``(H, W, 3)``; :class:`FerplusError` if it cannot be read.

    Only regular files of at most :data:`~ferplus.images.MAX_IMAGE_PIXELS` pixels are decoded,
    and libpng's and OpenCV's own warnings are kept off stderr.
    """
    with native_stderr_silenced():
        try:
            return read_image_file(path, cv2.IMREAD_COLOR)
        except UnreadableImage as e:
            raise FerplusError(f"{path}: {e}") from None


def to_gray(image: np.ndarray) -> np.ndarray:
    """An 8-bit grayscale copy of a BGR (or already grayscale) image."""
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def detect_faces(gray: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> np.ndarray:
    """Faces in a grayscale image as int64 boxes ``(N, 4)`` (left, top, right, bottom), left to right.

    An image with a side longer than ``max_side`` is searched on a shrunken copy and the boxes
    are scaled back to its own pixels.
    """
    height, width = gray.shape
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
    found = load_detector().detectMultiScale(
        gray, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(MIN_FACE, MIN_FACE)
    )
    return _sorted_boxes(found, scale)


def detect_face_near(gray: np.ndarray, box: np.ndarray) -> Optional[np.ndarray]:
    """The face in a window around ``box`` (left, top, right, bottom) of about its size, or None.

    Between full searches a tracked face is looked for only where it was: a window of
    :data:`NEAR_REACH` box sides around it, and face sizes within :data:`NEAR_SIZE` of the
    box's, which costs a small fraction of a search of the whole frame. Of several hits the
    one nearest to ``box``'s centre is returned.
    """
    left, top, right, bottom = (int(v) for v in box)
    side = max(right - left, bottom - top)
    reach = int(round(NEAR_REACH * side))
    height, width = gray.shape
    x0, y0 = max(0, left - reach), max(0, top - reach)
    x1, y1 = min(width, right + reach), min(height, bottom + reach)
    low, high = round(side / NEAR_SIZE), round(side * NEAR_SIZE)
    if x1 - x0 < low or y1 - y0 < low:
        return None
    found = load_detector().detectMultiScale(
        gray[y0:y1, x0:x1], scaleFactor=SCALE_FACTOR, minNeighbors=NEAR_NEIGHBORS,
        minSize=(max(MIN_FACE, low),) * 2, maxSize=(high, high),
    )
    boxes = _sorted_boxes(found, 1.0) + np.array([x0, y0, x0, y0])
    if not len(boxes):
        return None
    centre = np.array([left + right, top + bottom])
    distance = np.abs(boxes[:, [0, 1]] + boxes[:, [2, 3]] - centre).sum(axis=1)
    return boxes[int(np.argmin(distance))]


def _sorted_boxes(found: Sequence, scale: float) -> np.ndarray:
    """The cascade's (x, y, w, h) hits as int64 (left, top, right, bottom) boxes in full-size pixels, left to right."""
    boxes = np.zeros((0, 4), dtype=np.int64)
    if len(found):
        x, y, w, h = np.asarray(found, dtype=np.float64).T
        boxes = np.round(np.stack([x, y, x + w, y + h], axis=1) / scale).astype(np.int64)
        boxes = boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))]  # a stable order for output and tests
    return boxes


def square_box(box: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """The square (left, top, right, bottom) around ``box``'s centre, ``margin`` of its side wider each way.

    The result may reach past the image; :func:`crop_faces` mirrors the image there.
    """
    left, top, right, bottom = (int(v) for v in box)
    side = max(right - left, bottom - top)
    side = int(round(side * (1 + 2 * margin)))
    cx2, cy2 = left + right, top + bottom  # twice the centre, to stay in integers
    new_left = (cx2 - side) // 2
    new_top = (cy2 - side) // 2
    return np.array([new_left, new_top, new_left + side, new_top + side], dtype=np.int64)


def crop_faces(gray: np.ndarray, boxes: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """Square FER-like crops uint8 ``(N, 48, 48)`` of the faces in ``boxes`` (left, top, right, bottom).

    Each box is widened to a square with ``margin``; where it reaches past the image, the image
    is mirrored about its outer pixel edges, as :func:`ferplus.transforms.crop` does (a flat
    border would give the histogram equalisation a spike of one grey level). Shrinking to 48×48
    here, with area averaging, rather than letting the 64×64 crop's bilinear sampling shrink a
    large photo face, avoids aliasing and gives the face FER's resolution.
    """
    crops = np.zeros((len(boxes), FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    height, width = gray.shape
    for i, box in enumerate(boxes):
        left, top, right, bottom = square_box(box, margin)
        pad = max(0, -left, -top, right - width, bottom - height)
        region = gray
        if pad:
            region = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REFLECT)
        face = region[top + pad : bottom + pad, left + pad : right + pad]
        crops[i] = resize_face(face)
    return crops


def resize_face(face: np.ndarray) -> np.ndarray:
    """Bring a grayscale face to FER's 48×48: area averaging when shrinking (no aliasing), bilinear when growing."""
    height, width = face.shape
    if (height, width) == (FACE_SIZE, FACE_SIZE):
        return face
    shrinking = height > FACE_SIZE or width > FACE_SIZE
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(face, (FACE_SIZE, FACE_SIZE), interpolation=interpolation)


def face_inputs(crops: np.ndarray) -> np.ndarray:
    """Network inputs float32 ``(N, 1, 64, 64)`` from 48×48 crops, by the evaluation preprocessing.

    The whole-crop box is passed exactly as a FER image's ``label.csv`` box (0, 0, 48, 48) is,
    so a FER image given as a crop gets the very input the evaluation path gives it.
    """
    boxes = np.tile(np.array([[0, 0, FACE_SIZE, FACE_SIZE]], dtype=np.int64), (len(crops), 1))
    return preprocess(crops, boxes=boxes, augment=False)


def face_probabilities(scorer: ScoreFn, crops: np.ndarray) -> np.ndarray:
    """Emotion probabilities float64 ``(N, 8)`` of 48×48 face crops, in one call of ``scorer``.

    Softmax in float64, so that each row sums to one; no crops give an empty ``(0, 8)``.
    """
    if not len(crops):
        return np.zeros((0, NUM_EMOTIONS))
    scores = scorer(torch.from_numpy(face_inputs(crops)))
    return torch.softmax(scores.double(), dim=1).cpu().numpy()
