"""The FER2013 / FER+ data format: image size, vote columns, split folders, the ``label.csv`` line.

Everything that reads or writes FER data (the generator, the reader, the synthetic writer,
face crops, the datasets) takes these facts from here.
"""

from __future__ import annotations

import re
from typing import Sequence

#: The eight emotions a network predicts, in output order.
EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
#: The ten vote columns of ``fer2013new.csv`` and ``label.csv``: the emotions, then two rejects.
VOTE_CATEGORIES = EMOTIONS + ("unknown", "NF")
NUM_EMOTIONS = len(EMOTIONS)
NUM_VOTES = len(VOTE_CATEGORIES)
NUM_TAGGERS = 10  # FER+ asked ten taggers about every image

IMAGE_SIZE = 48  # FER2013 faces are 48×48 8-bit grayscale
NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
MAX_PIXEL = 255
#: The face box of a FER2013 image: its faces are already cropped, so the box is the whole image.
FACE_BOX = (0, 0, IMAGE_SIZE, IMAGE_SIZE)
#: Networks take (N, 1, CROP_SIZE, CROP_SIZE) preprocessed crops of the face box.
CROP_SIZE = 64

#: fer2013.csv's ``Usage`` value → prepared split folder, in split order.
USAGE_FOLDERS = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
#: The splits by the names the tools use (``--split``, ``FERPlus(split=...)``) → prepared split folder.
SPLIT_FOLDERS = dict(zip(("train", "val", "test"), USAGE_FOLDERS.values()))
#: Other spellings of a split that every tool accepts (the folder's own ``Valid``, older versions).
SPLIT_ALIASES = {"valid": "val", "validation": "val"}
LABEL_FILE = "label.csv"

# fer2013.csv: its ``emotion`` column is FER's old label, unused by FER+.
PIXELS_COLUMN = "pixels"
USAGE_COLUMN = "Usage"
FER_HEADER = "emotion,pixels,Usage"
# fer2013new.csv.
NAME_COLUMN = "Image name"
FERPLUS_HEADER = ",".join((USAGE_COLUMN, NAME_COLUMN) + VOTE_CATEGORIES)

#: label.csv columns: image name, face box, then the votes.
LABEL_NAME_COLUMN, LABEL_BOX_COLUMN, LABEL_FIRST_VOTE_COLUMN = 0, 1, 2
LABEL_NUM_COLUMNS = LABEL_FIRST_VOTE_COLUMN + NUM_VOTES


def canonical_split(split: str) -> str:
    """``split`` in the tools' own spelling (``valid`` → ``val``); anything else comes back unchanged."""
    return SPLIT_ALIASES.get(split, split) if isinstance(split, str) else split


def label_line(name: str, votes: Sequence[int], box: Sequence[int] = FACE_BOX) -> str:
    """One ``label.csv`` line: ``fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0`` and a newline."""
    return f'{name},"({", ".join(map(str, box))})",{",".join(map(str, votes))}\n'


_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")


def name_problem(name: str) -> str:
    """Why ``name`` cannot name an image of a split folder, or "" when it can.

    An image is one plain file name inside its split: no folder part (so ``x.png`` and
    ``./x.png`` cannot be two images, and nothing outside the split is read), not ``.`` or
    ``..``, no control characters (a NUL cannot be part of a file name, the rest should not).
    """
    if not name:
        return "is empty"
    if "/" in name or "\\" in name:
        return "is a path, not a plain file name inside the split folder"
    if name in (".", ".."):
        return "names a folder, not a file"
    if _CONTROL_CHARACTER.search(name):
        return "holds control characters"
    return ""
