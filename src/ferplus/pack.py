"""A split folder's decoded images in one file, served only while it provably matches the folder.

The generator writes :data:`PACK_FILE` into every split folder it makes, after the PNGs and
``label.csv``: the images as one uint8 array, the parsed ``label.csv`` (names, boxes, votes), the
SHA-256 of ``label.csv``'s bytes and, per image, the ``(size, mtime_ns, inode)`` of its PNG as
written. :func:`load_pack` serves it only when all of these still hold, so what it serves is what
decoding the PNGs would give:

* ``label.csv`` edited: its digest differs (the names, boxes and votes come from those bytes).
* a PNG removed: its ``stat`` fails; replaced (a copy or an editor's save-and-rename): a new inode;
  rewritten in place: a new mtime (and usually size). The PNGs are written into a private staging
  folder and swapped in after the pack, which takes longer than the file system's timestamp
  granularity, so an edit after the swap always gets a later mtime. Only a deliberate
  ``touch -d`` back to the old time with the same size goes unnoticed.
* a PNG added: the reader reads only the images ``label.csv`` lists, so it changes nothing
  until ``label.csv`` lists it, and then the digest differs.

The change time (ctime) is not compared: the hard links ``export_labels`` makes change it.
Validating costs one ``stat`` per image (~0.3 s for the 35,887 of FER+ on a 2-core EPYC),
against ~4 s to decode the PNGs.
"""

from __future__ import annotations

import hashlib
import os
import stat
import zipfile
from pathlib import Path
from typing import NamedTuple, Sequence, Union

import numpy as np

from .fer_format import name_problem

#: The pack's file name inside a split folder.
PACK_FILE = "images.npz"
#: Bumped whenever the pack's contents or their meaning change: an older pack is then decoded anew.
PACK_FORMAT = 1
_KEYS = ("format", "label_sha256", "names", "boxes", "votes", "files", "images")


class Pack(NamedTuple):
    """The contents of a matching pack: ``names``, ``boxes`` int64 ``(N, 4)``, ``votes`` int64
    ``(N, 10)``, ``images`` uint8 ``(N, H, W)``."""

    names: list
    boxes: np.ndarray
    votes: np.ndarray
    images: np.ndarray


def label_digest(label_bytes: bytes) -> np.ndarray:
    """SHA-256 of ``label.csv``'s bytes, as stored in the pack."""
    return np.frombuffer(hashlib.sha256(label_bytes).digest(), dtype=np.uint8)


def file_stamps(folder: Path, names: Sequence[str]) -> np.ndarray:
    """int64 ``(N, 3)``: ``(size, mtime_ns, inode)`` of each ``folder/name``; raises ``OSError``."""
    prefix = os.path.join(str(folder), "")  # str paths: a Path per file costs as much as its stat
    stamps = np.empty((len(names), 3), dtype=np.int64)
    for i, name in enumerate(names):
        st = os.stat(prefix + name)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{name} is not a regular file")
        stamps[i] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return stamps


def write_pack(folder: Path, label_bytes: bytes, names: Sequence[str], boxes: np.ndarray, votes: np.ndarray,
               images: np.ndarray) -> None:
    """Write ``folder``'s pack for the PNGs ``names`` already written there.

    Written in place: ``folder`` is one nobody reads yet (the generator's staging folder, whose
    swap makes the whole split appear at once).
    """
    arrays = {
        "format": np.array(PACK_FORMAT),
        "label_sha256": label_digest(label_bytes),
        "names": np.array(names, dtype=str),
        "boxes": boxes,
        "votes": votes,
        "files": file_stamps(folder, names),
        "images": images,
    }
    with open(folder / PACK_FILE, "wb") as f:
        np.savez(f, **arrays)


def load_pack(folder: Path, label_bytes: bytes) -> Union[Pack, str, None]:
    """``folder``'s pack if it matches ``label_bytes`` and every listed PNG; else why not (one
    short phrase); None when there is no pack (a folder of an older generator)."""
    path = folder / PACK_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if sorted(npz.files) != sorted(_KEYS) or int(npz["format"]) != PACK_FORMAT:
                return f"{PACK_FILE} has another format"
            if not np.array_equal(npz["label_sha256"], label_digest(label_bytes)):
                return f"{PACK_FILE} was made for another label.csv"
            names = npz["names"].tolist()
            files, boxes, votes = npz["files"], npz["boxes"], npz["votes"]
            images = npz["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return f"{PACK_FILE} cannot be read"
    count = len(names)
    shapes_ok = files.shape == (count, 3) and boxes.shape == (count, 4) and votes.shape[0] == count
    if not shapes_ok or images.ndim != 3 or len(images) != count or images.dtype != np.uint8:
        return f"{PACK_FILE} is inconsistent"
    height, width = images.shape[1:]
    boxes_fit = count == 0 or (boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= width and boxes[:, 3].max() <= height)
    if len(set(names)) != count or any(name_problem(name) for name in names) or not boxes_fit:
        return f"{PACK_FILE} does not describe a valid split"
    try:
        stamps = file_stamps(folder, names)
    except OSError:
        return "an image is missing or not a regular file"
    changed = np.flatnonzero((stamps != files).any(axis=1))
    if len(changed):
        return f"{names[changed[0]]} changed since the pack was made"
    return Pack(names, boxes, votes, images)

