"""FER+ labels for other tools: one CSV per split, and a torchvision ``ImageFolder`` tree.

Both are made from a prepared data folder (``FER2013Train/`` … with ``label.csv`` and PNGs) by
:func:`export_labels`; the targets are those of :func:`ferplus.labels.process_votes`, the rules
the trainer uses.

**The CSV** ``ferplus_<split>.csv`` (split ``train``, ``val`` or ``test``): UTF-8, ``\\n`` line
ends, one header line, then one row per image of the split in ``label.csv`` order, with the
columns of :data:`CSV_COLUMNS`:

========================================  ====================================================
``image``                                 image file name (``fer0000000.png``)
``split``                                 ``train``, ``val`` or ``test``
``votes_neutral`` … ``votes_NF``          the ten FER+ vote counts (neutral, happiness,
                                          surprise, sadness, anger, disgust, fear, contempt,
                                          unknown, NF)
``majority_label``                        the majority mode's emotion; empty where that mode
                                          drops the image
``<mode>_keep``                           ``1`` where ``<mode>`` keeps the image, ``0`` where
                                          it drops it
``<mode>_neutral`` … ``<mode>_contempt``  ``<mode>``'s target distribution over the eight
                                          emotions: sums to 1 where kept, all 0 where dropped
========================================  ====================================================

``<mode>`` runs over ``majority``, ``probability``, ``crossentropy``, ``multi_target``, each
mode's ``_keep`` column followed by its eight distribution columns. ``majority`` rows are
one-hot; ``probability`` and ``crossentropy`` share one distribution (the first trains on
labels drawn from it, the second on it directly); the ``multi_target`` targets are the emotions
with a non-zero share. Numbers are written as the shortest decimal that reads back as the same
float32 (``1.0``, ``0.625``, ``0.33333334``), so the bytes are a pure function of the votes.

**The ImageFolder tree**: ``<out>/<split>/<emotion>/<image>.png`` for every image the majority
mode keeps, hard links to the prepared PNGs (symbolic links where hard links fail, copies where
both fail). ``torchvision.datasets.ImageFolder("<out>/train")`` reads it; it numbers the classes
alphabetically (``anger`` 0 … ``surprise`` 7), not in :data:`~ferplus.labels.EMOTIONS` order,
and an emotion no image of a split has gets no folder there.

Nothing is half-written: every input is read and checked first; the tree is built in a staging
folder beside ``<out>`` and renamed into place; each CSV is written to a temporary file and renamed.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .data import FerFolder, read_data_folder
from .datasets import SPLITS, check_split
from .errors import FerplusError
from .fer_format import EMOTIONS, VOTE_CATEGORIES, canonical_split
from .fileio import atomic_write
from .labels import EVAL_MODE, MODES, majority_class, process_votes

PathLike = Union[str, os.PathLike]

#: The label CSV's columns, in order (see the module docstring).
CSV_COLUMNS = (
    "image",
    "split",
    *(f"votes_{category}" for category in VOTE_CATEGORIES),
    "majority_label",
    *(column for mode in MODES for column in (f"{mode}_keep", *(f"{mode}_{emotion}" for emotion in EMOTIONS))),
)
#: The ImageFolder tree holds the labels of this mode, the one with a single class per image.
IMAGEFOLDER_MODE = EVAL_MODE
STAGING_SUFFIX = ".staging-"
#: Written at the top of every ImageFolder tree: ``overwrite`` replaces only a tree that holds it
#: and nothing but this tool's layout (split / emotion / image).
TREE_MARKER = ".ferplus-imagefolder"


def _hard_link(source: Path, target: Path) -> None:
    os.link(source, target)


def _symlink(source: Path, target: Path) -> None:
    os.symlink(source.resolve(), target)  # absolute, so the tree can be moved


#: How files enter the ImageFolder tree, in the order tried.
_PLACERS = {"hard link": _hard_link, "symlink": _symlink, "copy": shutil.copyfile}
PLACEMENTS = tuple(_PLACERS)


@dataclass
class ExportSummary:
    """What :func:`export_labels` wrote."""

    #: Per split: ``images``, and per mode the number of images it keeps.
    kept: Dict[str, Dict[str, int]] = field(default_factory=dict)
    #: Files of the ImageFolder tree per way of placing them (:data:`PLACEMENTS`); empty without a tree.
    placed: Dict[str, int] = field(default_factory=dict)
    #: The files and folders written.
    written: List[Path] = field(default_factory=list)


def csv_name(split: str) -> str:
    """The file name of ``split``'s label CSV."""
    return f"ferplus_{split}.csv"


def _number(value: np.float32) -> str:
    return np.format_float_positional(value, unique=True, trim="0")


def label_csv_text(names: Sequence[str], votes: np.ndarray, split: str) -> str:
    """The label CSV of one split (header included) for images ``names`` with ``votes`` ``(N, 10)``."""
    per_mode = {mode: process_votes(votes, mode) for mode in MODES}
    majority_targets, majority_keep = per_mode[IMAGEFOLDER_MODE]
    majority = majority_class(majority_targets)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for i, name in enumerate(names):
        fields = [name, split, *(str(int(v)) for v in votes[i])]
        fields.append(EMOTIONS[majority[i]] if majority_keep[i] else "")
        for targets, keep in per_mode.values():
            fields.append("1" if keep[i] else "0")
            fields.extend(_number(t) for t in targets[i])
        writer.writerow(fields)
    return text.getvalue()


def export_labels(
    base_folder: PathLike,
    csv_dir: Optional[PathLike] = None,
    imagefolder: Optional[PathLike] = None,
    splits: Sequence[str] = tuple(SPLITS),
    overwrite: bool = False,
) -> ExportSummary:
    """Write the label CSVs into ``csv_dir`` and/or the ImageFolder tree at ``imagefolder``.

    Args:
        base_folder: the prepared data folder (``FER2013Train/`` … with ``label.csv`` and PNGs).
        csv_dir: folder that receives ``ferplus_<split>.csv`` per split (created if needed).
        imagefolder: folder that becomes the ImageFolder tree; it must not exist or be empty.
        splits: which of ``train``, ``val``, ``test`` to export.
        overwrite: replace existing CSVs, and an ``imagefolder`` tree that this function wrote
            (:data:`TREE_MARKER`); never a folder holding anything else.

    Raises:
        FerplusError: nothing to export, an unknown split, an output that exists (without
            ``overwrite``), an output that holds or is inside a split folder being read, a
            non-empty ``imagefolder`` that is not this tool's tree, or a bad data folder (an
            image listed twice in a split, say); nothing has been written then.
    """
    if csv_dir is None and imagefolder is None:
        raise FerplusError("nothing to export: give a CSV folder, an ImageFolder output or both")
    try:
        folders = {canonical_split(split): check_split(split) for split in dict.fromkeys(splits)}
    except ValueError as e:
        raise FerplusError(str(e)) from None
    base = Path(base_folder)
    csv_paths = {split: Path(csv_dir) / csv_name(split) for split in folders} if csv_dir is not None else {}
    for out in filter(None, (csv_dir, imagefolder)):
        _check_outside_data(Path(out), [base / folder for folder in folders.values()])
    if not overwrite:
        for path in csv_paths.values():
            if path.exists():
                raise FerplusError(f"{path}: already exists (--overwrite replaces it)")
    if imagefolder is not None:
        _check_tree_output(Path(imagefolder), overwrite)

    read = read_data_folder(base, list(folders.values()))
    data = {split: read[folder] for split, folder in folders.items()}
    summary = ExportSummary(kept={
        split: {"images": len(d.names), **{mode: int(process_votes(d.votes, mode)[1].sum()) for mode in MODES}}
        for split, d in data.items()
    })
    texts = {split: label_csv_text(data[split].names, data[split].votes, split) for split in csv_paths}
    if imagefolder is not None:
        summary.placed = _write_tree(Path(imagefolder), data)
        summary.written.append(Path(imagefolder))
    for split, path in csv_paths.items():
        atomic_write(path, lambda tmp, text=texts[split]: Path(tmp).write_text(text, encoding="utf-8", newline="\n"))
        summary.written.append(path)
    return summary


def format_export_summary(summary: ExportSummary) -> str:
    """A table of the images each mode keeps per split, then how the tree's files were placed."""
    lines = [f"{'split':<7}{'images':>8}" + "".join(f"{mode:>14}" for mode in MODES)]
    for split, counts in summary.kept.items():
        lines.append(f"{split:<7}{counts['images']:>8}" + "".join(f"{counts[mode]:>14}" for mode in MODES))
    if summary.placed:
        total = sum(summary.placed.values())
        how = ", ".join(f"{count} by {way}" for way, count in summary.placed.items() if count)
        lines.append(f"ImageFolder tree ({IMAGEFOLDER_MODE} labels): {total} images ({how or 'none'})")
    return "\n".join(lines)


def _check_outside_data(out: Path, split_folders: Sequence[Path]) -> None:
    """An output may neither hold a split folder being read nor lie inside one."""
    where = out.resolve()
    for folder in split_folders:
        inside = folder.resolve()
        if inside.is_relative_to(where) or where.is_relative_to(inside):
            raise FerplusError(f"{out}: holds or is inside the split folder {folder} being read; choose another output")


def _check_tree_output(out: Path, overwrite: bool) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise FerplusError(f"{out}: exists and is not a folder")
        if not any(out.iterdir()):
            return
        if not overwrite:
            raise FerplusError(f"{out}: already exists and is not empty (--overwrite replaces it)")
        if not _is_our_tree(out):
            raise FerplusError(
                f"{out}: holds files this tool did not write (no {TREE_MARKER} tree); "
                "--overwrite replaces only an ImageFolder tree it made"
            )


def _is_our_tree(out: Path) -> bool:
    """Whether ``out`` holds :data:`TREE_MARKER` and nothing but split / emotion / image entries."""
    if not (out / TREE_MARKER).is_file():
        return False
    for split in out.iterdir():
        if split.name == TREE_MARKER:
            continue
        if split.name not in SPLITS or split.is_symlink() or not split.is_dir():
            return False
        for emotion in split.iterdir():
            if emotion.name not in EMOTIONS or emotion.is_symlink() or not emotion.is_dir():
                return False
            if any(image.is_dir() and not image.is_symlink() for image in emotion.iterdir()):
                return False
    return True


def _write_tree(out: Path, data: Dict[str, FerFolder]) -> Dict[str, int]:
    """Build the ImageFolder tree in a staging folder beside ``out``, then swap it in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_SUFFIX}", dir=out.parent))
    placed = dict.fromkeys(PLACEMENTS, 0)
    try:
        tree = staging / "tree"
        tree.mkdir()
        (tree / TREE_MARKER).touch()
        method = 0  # once a way of placing files fails, the later files skip it
        for split, d in data.items():
            targets, keep = process_votes(d.votes, IMAGEFOLDER_MODE)
            labels = majority_class(targets)
            (tree / split).mkdir(parents=True)  # even when every image of the split is dropped
            for i in np.flatnonzero(keep):
                folder = tree / split / EMOTIONS[labels[i]]
                folder.mkdir(exist_ok=True)
                method = _place(d.folder / d.names[i], folder / d.names[i], method)
                placed[PLACEMENTS[method]] += 1
        if out.exists():
            os.replace(out, staging / "replaced")  # deleted with the staging folder
        os.replace(tree, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return placed


def _place(source: Path, target: Path, method: int) -> int:
    """Put ``source`` at ``target`` by the first of :data:`PLACEMENTS` from index ``method`` on
    that works; returns the index of the one used."""
    while True:
        try:
            _PLACERS[PLACEMENTS[method]](source, target)
            return method
        except (FileExistsError, FileNotFoundError):
            raise  # a clash or a vanished source: another way would only hide it
        except OSError:
            if method == len(PLACEMENTS) - 1:
                raise
            method += 1
