"""FER+ as a torchvision-style dataset, for training loops other than this project's.

:class:`FERPlus` serves ``(PIL image, target)`` pairs of one split under one of the four label
modes, with the images each mode drops left out, exactly as the trainer does (the labels come
from :func:`ferplus.labels.process_votes`). It reads a prepared data folder (this project's, or
the original FER+ repository's ``data/`` folder with its PNGs generated: the same split folders
and ``label.csv`` lines) or, with :meth:`FERPlus.from_csv`, ``fer2013.csv`` and
``fer2013new.csv`` directly, without writing any PNG::

    train = FERPlus("data", split="train", mode="crossentropy", transform=transforms.ToTensor())
    loader = DataLoader(train, batch_size=64, shuffle=True, num_workers=4)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .data import FerFolder, read_folder
from .fer_format import EMOTIONS, FACE_BOX, SPLIT_FOLDERS, canonical_split
from .labels import get_mode, majority_class, process_votes
from .prepare import read_splits

PathLike = Union[str, os.PathLike]

#: The dataset's split names (torchvision's) and the prepared folder each one reads.
SPLITS = SPLIT_FOLDERS


def check_split(split: str) -> str:
    """The prepared folder of ``split`` (``valid`` is read as ``val``); a ``ValueError`` naming the choices for an unknown split."""
    split = canonical_split(split)
    if not isinstance(split, str) or split not in SPLITS:  # a list is not hashable: TypeError otherwise
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return SPLITS[split]


def check_mode(mode: str) -> None:
    """A ``ValueError`` naming the choices for an unknown mode (or one that is not a string)."""
    get_mode(mode if isinstance(mode, str) else repr(mode))


class FERPlus(Dataset):
    """One split of FER+ under one label mode: items are ``(image, target)``.

    ``image`` is the face box of the image as an 8-bit grayscale PIL image (mode ``"L"``; FER
    boxes are the whole 48x48 image), passed through ``transform`` if given. ``target`` depends
    on ``mode`` (then passes through ``target_transform``):

    * ``majority``: the class index (``int``) of the emotion with more than half of the votes;
    * ``probability``: a class index (``int``) drawn afresh from the vote distribution at every
      access, with torch's default generator, as torchvision's random transforms draw: seed it
      with ``torch.manual_seed``. Each ``DataLoader`` iterator seeds its worker ``w`` with
      ``base_seed + w``, ``base_seed`` drawn from that generator, so workers draw independently,
      every epoch draws anew, and a seeded program draws the same labels for the same number
      of workers (with ``num_workers=0`` the draws come from the main process's generator);
    * ``crossentropy``: the vote distribution, a float32 tensor of 8 summing to 1;
    * ``multi_target``: the 0/1 float32 mask of the emotions with at least 30 % of the votes
      (unsmoothed; the trainer's ``1e-3`` smoothing belongs to its loss, see
      :data:`ferplus.losses.MULTI_TARGET_SMOOTHING`).

    Class indices follow :data:`ferplus.labels.EMOTIONS` (the order of the networks' outputs).

    Args:
        root: data folder holding ``FER2013Train/``, ``FER2013Valid/`` and ``FER2013Test/``.
        split: ``"train"``, ``"val"`` or ``"test"`` (:data:`SPLITS`).
        mode: ``"majority"``, ``"probability"``, ``"crossentropy"`` or ``"multi_target"``.
        transform: called on the PIL image (a torchvision transform, say).
        target_transform: called on the target.

    Attributes:
        classes: the eight emotion names; ``class_to_idx`` maps them to indices.
        names: the image file name of each item.
        targets: per item, for ``majority`` a ``list`` of class indices; for the other modes a
            float32 tensor ``(N, 8)``: the vote distributions (``crossentropy``; for
            ``probability`` the distributions its labels are drawn from) or the masks
            (``multi_target``).
        votes: int64 array ``(N, 10)``, the raw FER+ votes of each item.

    Raises:
        ValueError: an unknown split or mode.
        FileNotFoundError: the split's folder does not exist.
        ferplus.errors.FerplusError: a malformed ``label.csv`` or a missing or unreadable image.
    """

    classes = list(EMOTIONS)
    class_to_idx = {emotion: index for index, emotion in enumerate(EMOTIONS)}

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        mode: str = "majority",
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
    ) -> None:
        folder = Path(root) / check_split(split)
        check_mode(mode)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{folder}: no such folder (prepare it with generate_training_data.py, or use FERPlus.from_csv)"
            )
        self._setup(read_folder(folder), Path(root), split, mode, transform, target_transform)

    @classmethod
    def from_csv(
        cls,
        fer_csv: PathLike,
        ferplus_csv: PathLike,
        split: str = "train",
        mode: str = "majority",
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
    ) -> "FERPlus":
        """The dataset straight from Kaggle's ``fer2013.csv`` (or ``icml_face_data.csv``) and
        FER+'s ``fer2013new.csv``, in memory: the images ``generate_training_data.py`` would
        write for the split, read and validated by the same code. ``root`` is ``fer_csv``.

        Raises ``FileNotFoundError`` for a missing file and ``FerplusError`` for a malformed one.
        """
        folder = check_split(split)
        check_mode(mode)
        for path in (fer_csv, ferplus_csv):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{path}: no such file")
        names, votes, images = read_splits(fer_csv, ferplus_csv)[folder]
        boxes = np.tile(np.array(FACE_BOX, dtype=np.int64), (len(names), 1))
        data = FerFolder(folder=Path(fer_csv), names=names, boxes=boxes, votes=votes, images=images)
        dataset = cls.__new__(cls)
        dataset._setup(data, Path(fer_csv), split, mode, transform, target_transform)
        return dataset

    def _setup(
        self,
        data: FerFolder,
        root: Path,
        split: str,
        mode: str,
        transform: Optional[Callable],
        target_transform: Optional[Callable],
    ) -> None:
        distributions, keep = process_votes(data.votes, mode)
        self.root, self.split, self.mode = root, split, mode
        self.transform, self.target_transform = transform, target_transform
        # Only the kept images are held: the dataset's index i is the i-th kept image.
        self.names = [name for name, kept in zip(data.names, keep) if kept]
        self.votes = data.votes[keep]
        self._images, self._boxes = data.images[keep], data.boxes[keep]
        distributions = distributions[keep]
        if mode == "majority":
            self.targets = majority_class(distributions).tolist()
        elif mode == "multi_target":
            self.targets = torch.from_numpy((distributions > 0).astype(np.float32))
        else:
            self.targets = torch.from_numpy(distributions)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        left, top, right, bottom = self._boxes[index]
        image = Image.fromarray(np.ascontiguousarray(self._images[index, top:bottom, left:right]))
        if self.mode == "majority":
            target = self.targets[index]
        elif self.mode == "probability":
            target = int(torch.multinomial(self.targets[index], 1))
        else:
            target = self.targets[index].clone()  # the caller may change it in place
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __repr__(self) -> str:
        lines = [
            f"Dataset {type(self).__name__}",
            f"    Number of datapoints: {len(self)}",
            f"    Root location: {self.root}",
            f"    Split: {self.split}",
            f"    Mode: {self.mode}",
        ]
        if self.transform is not None:
            lines.append(f"    Transform: {self.transform!r}")
        if self.target_transform is not None:
            lines.append(f"    Target transform: {self.target_transform!r}")
        return "\n".join(lines)
