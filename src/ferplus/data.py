"""Prepared FER+ folders in memory, and the minibatch streams the trainer and evaluator read.

A prepared split folder (``FER2013Train`` …) holds PNG faces and a ``label.csv`` whose lines
read ``name,"(left, top, right, bottom)",v0,…,v9`` (the ten vote counts). :func:`read_folder`
loads a whole split as one uint8 array; :class:`TrainStream` keeps it on the training device
and serves shuffled, augmented minibatches with the mode's targets; :class:`EvalSet` holds the
majority-labelled images preprocessed once.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import torch

from .fileio import read_regular_file
from .errors import FerplusError
from .fer_format import (
    EMOTIONS,
    LABEL_BOX_COLUMN,
    LABEL_FILE,
    LABEL_FIRST_VOTE_COLUMN,
    LABEL_NAME_COLUMN,
    LABEL_NUM_COLUMNS,
    NUM_EMOTIONS,
    NUM_VOTES,
    SPLIT_FOLDERS,
    name_problem,
)
from .images import UnreadableImage, native_stderr_silenced, read_image_file
from .labels import EVAL_MODE, MAX_VOTES, get_mode, majority_class, process_votes
from .pack import Pack, load_pack
from .prepare import generation_lock, unfinished_swap
from .transforms import CROP_BLOCK, preprocess

_BOX_PATTERN = re.compile(r"^\s*\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)\s*$")
_VOTE_PATTERN = re.compile(r"^\s*\d+\s*$")

#: Images augmented and preprocessed per device call (one preprocessing block, so no copy);
#: minibatches are sliced from such a chunk.
CHUNK_IMAGES = CROP_BLOCK
#: Heading of the summary table's first column.
SPLIT_COLUMN_HEADER = "emotion"

Device = Union[str, torch.device]


@dataclass
class FerFolder:
    """One prepared split in memory.

    ``boxes`` int64 ``(N, 4)`` (left, top, right, bottom); ``votes`` int64 ``(N, 10)``;
    ``images`` uint8 ``(N, H, W)``.
    """

    folder: Path
    names: list[str]
    boxes: np.ndarray
    votes: np.ndarray
    images: np.ndarray


def _parse_line(row: list[str], where: str) -> tuple[str, tuple[int, ...], list[int]]:
    if len(row) != LABEL_NUM_COLUMNS:
        raise FerplusError(f"{where}: expected {LABEL_NUM_COLUMNS} columns (name, box, {NUM_VOTES} votes), got {len(row)}")
    name = row[LABEL_NAME_COLUMN].strip()
    problem = name_problem(name)
    if problem:
        raise FerplusError(f"{where}: image name {name!r} {problem}")
    box_match = _BOX_PATTERN.match(row[LABEL_BOX_COLUMN])
    if box_match is None:
        raise FerplusError(f"{where}: face box {row[LABEL_BOX_COLUMN]!r} is not '(left, top, right, bottom)'")
    left, top, right, bottom = box = tuple(int(v) for v in box_match.groups())
    if right <= left or bottom <= top:
        raise FerplusError(f"{where}: face box {box} is empty")
    votes = row[LABEL_FIRST_VOTE_COLUMN:]
    bad = [v for v in votes if not _VOTE_PATTERN.match(v)]
    if bad:
        raise FerplusError(f"{where}: vote counts must be non-negative integers, got {bad[0]!r}")
    counts = [int(v) for v in votes]
    if max(counts) > MAX_VOTES:
        raise FerplusError(f"{where}: vote count {max(counts)} is larger than {MAX_VOTES}")
    return name, box, counts


def _read_gray(path: Path) -> Union[np.ndarray, str]:
    """The image as uint8 ``(H, W)``, or why it cannot be used."""
    try:
        return read_image_file(path, cv2.IMREAD_GRAYSCALE)
    except UnreadableImage as e:
        return str(e)


def _missing_folder_hint(folder: Path) -> str:
    """What to do about a split folder that does not exist."""
    if (folder.parent / LABEL_FILE).is_file():  # the data folder given was itself a split folder
        return f"{folder.parent} is a split folder itself: give the folder above it, -d {folder.parent.parent}"
    return "prepare the data with generate_training_data.py first"


def read_label_file(label_path: Path) -> tuple[bytes, list[tuple[int, list[str]]]]:
    """The bytes of a split's ``label.csv`` and its non-blank rows, each with its 1-based line number.

    Raises:
        FerplusError: the file is missing, not a regular file (a FIFO would block), or not UTF-8 CSV text.
    """
    try:
        data = read_regular_file(label_path)
        # utf-8-sig: a byte-order mark, as some editors write, is not part of the first name.
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    except OSError as e:
        raise FerplusError(f"{label_path}: cannot read: {e.strerror or e}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise FerplusError(f"{label_path}: not a label.csv text file ({e})") from None
    # Blank lines carry no image.
    return data, [(number, row) for number, row in enumerate(rows, 1) if row]


def read_folder(folder: Union[str, Path]) -> FerFolder:
    """Read a prepared split folder (``label.csv`` + PNGs) into memory.

    The split's pack (:mod:`ferplus.pack`) is served when it matches ``label.csv`` and every PNG;
    when it does not, the PNGs are decoded and a one-line note on stderr says why. The data
    folder's generation lock is held meanwhile, so a generator run swaps the split only before
    or after (:func:`read_data_folder` reads several splits of one generation).

    Raises:
        FerplusError: for a missing folder; and naming ``label.csv`` and the line, for a line
            with the wrong number of columns, a name that is not one plain file name, a box that
            does not parse or does not fit its image, bad vote counts, an image listed twice, a
            missing or unreadable image (or one that is not a regular file, or too large to
            decode), or an image whose size differs from the folder's usual one.
    """
    folder = Path(folder)
    with generation_lock(folder.parent, exclusive=False):  # held before the folder is looked at
        data, note = _read_split(_existing_split(folder))
    _print_notes([note])
    return data


def read_data_folder(
    base_folder: Union[str, Path], folders: Sequence[str] = tuple(SPLIT_FOLDERS.values())
) -> Dict[str, FerFolder]:
    """:func:`read_folder` of each split folder ``folders`` (``FER2013Train`` …, all three by
    default, in this order) of one data folder, all of one generator run: a regeneration waits
    until they are read.

    Raises:
        FerplusError: as :func:`read_folder`, and when a killed generator left its swap of new
            split folders half done (its next run finishes it).
    """
    base = Path(base_folder)
    with generation_lock(base, exclusive=False):
        paths = {name: _existing_split(base / name) for name in folders}
        staging = unfinished_swap(base)
        if staging is not None:
            raise FerplusError(
                f"{base}: a generator run was stopped while it swapped in new split folders ({staging.name}); "
                "run generate_training_data.py again, which finishes the swap first"
            )
        read = {name: _read_split(path) for name, path in paths.items()}
    _print_notes([note for _, note in read.values()])
    return {name: data for name, (data, _) in read.items()}


def _existing_split(folder: Path) -> Path:
    if not folder.is_dir():
        raise FerplusError(f"{folder}: no such folder ({_missing_folder_hint(folder)})")
    return folder


def _print_notes(notes: Sequence[str]) -> None:
    """Print the notes of splits read, once all of them were read (an error is then its own one line)."""
    for note in filter(None, notes):
        print(f"note: {note}", file=sys.stderr, flush=True)


def _read_split(folder: Path) -> tuple[FerFolder, str]:
    """The split, and a note ("" when none) on why its pack was not used."""
    label_path = folder / LABEL_FILE
    data, numbered = read_label_file(label_path)
    pack = load_pack(folder, data)
    if isinstance(pack, Pack):
        return FerFolder(folder=folder, names=pack.names, boxes=pack.boxes, votes=pack.votes, images=pack.images), ""
    if not numbered:
        raise FerplusError(f"{label_path}: no images listed")
    parsed = [_parse_line(row, f"{label_path}: line {number}") for number, row in numbered]
    names = [name for name, _, _ in parsed]
    first_line: dict[str, int] = {}
    for (number, _), name in zip(numbered, names):
        if name in first_line:
            where = f"{label_path}: line {number}"
            raise FerplusError(f"{where}: image {name} is listed twice, on lines {first_line[name]} and {number}")
        first_line[name] = number

    with native_stderr_silenced(), ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_read_gray, [folder / name for name in names]))

    # The folder's size is the one most of its images have, so an odd image is blamed on its own line.
    shapes = Counter(image.shape for image in images if not isinstance(image, str))
    shape = shapes.most_common(1)[0][0] if shapes else None
    for (number, _), (name, box, _), image in zip(numbered, parsed, images):
        where = f"{label_path}: line {number}"
        if isinstance(image, str):
            raise FerplusError(f"{where}: image {folder / name}: {image}")
        height, width = image.shape
        left, top, right, bottom = box
        if right > width or bottom > height:
            raise FerplusError(f"{where}: face box {box} does not fit image {name} of {width}x{height} pixels")
        if image.shape != shape:
            raise FerplusError(
                f"{where}: image {name} is {width}x{height} pixels, the folder's others are {shape[1]}x{shape[0]}"
            )
    note = f"{folder}: {pack}: decoded the PNGs instead" if pack is not None else ""
    return FerFolder(
        folder=folder,
        names=names,
        boxes=np.array([box for _, box, _ in parsed], dtype=np.int64).reshape(-1, 4),
        votes=np.array([votes for _, _, votes in parsed], dtype=np.int64).reshape(-1, NUM_VOTES),
        images=np.stack(images),
    ), note


def _seed(*key: int) -> int:
    """A 63-bit generator seed that is a pure function of ``key`` (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _generator(device: torch.device, *key: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(_seed(*key))
    return generator


def _kept(data: FerFolder, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(keep, targets, labels, class_counts)`` of the images ``mode`` keeps (labels: first argmax)."""
    targets, keep = process_votes(data.votes, mode)
    labels = majority_class(targets[keep]).astype(np.int64)
    return keep, targets[keep], labels, np.bincount(labels, minlength=NUM_EMOTIONS).astype(np.int64)


class TrainStream:
    """Shuffled, augmented training minibatches of one split, generated on ``device``.

    Keeps the images ``mode`` keeps as uint8 on ``device``. Each epoch draws a permutation
    from ``(seed, epoch)`` (the same on every rank), rank ``r`` of ``world_size`` takes every
    ``world_size``-th image of it from position ``r`` (equal shards; the at most
    ``world_size - 1`` images left over are skipped that epoch), and augmentation and
    ``probability`` label draws use a generator seeded from ``(seed, epoch, rank)``.
    """

    def __init__(
        self,
        data: FerFolder,
        mode: str,
        batch_size: int,
        device: Device,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.loss_target = get_mode(mode).loss_target
        keep, targets, labels, self.class_counts = _kept(data, mode)
        self.mode = mode
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.augment = augment
        self.num_images = int(keep.sum())
        self.images = torch.from_numpy(data.images[keep]).to(self.device)
        self.boxes = torch.from_numpy(data.boxes[keep]).to(self.device)
        self.targets = torch.from_numpy(targets).to(self.device)
        self.labels = torch.from_numpy(labels).to(self.device)
        self.shard_size = self.num_images // world_size
        # Whole minibatches per chunk, so no minibatch straddles two chunks.
        self.chunk_size = max(1, CHUNK_IMAGES // batch_size) * batch_size

    def __len__(self) -> int:
        """Minibatches per epoch on this rank (the last one may be smaller)."""
        return math.ceil(self.shard_size / self.batch_size)

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's image indices for ``epoch``, in the order they are served."""
        order = torch.randperm(
            self.num_images, generator=_generator(self.device, self.seed, epoch), device=self.device
        )
        return order[self.rank::self.world_size][: self.shard_size]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs (B,1,64,64) float32, loss_targets (B,8) float32, labels (B,) int64)``."""
        generator = _generator(self.device, self.seed, epoch, self.rank)
        shard = self.shard(epoch)
        chunks = (
            self._chunk(shard[start:start + self.chunk_size], generator)
            for start in range(0, len(shard), self.chunk_size)
        )
        if self.device.type == "cuda":
            chunks = _made_ahead(chunks, shard)
        for inputs, loss_targets, labels in chunks:
            for b in range(0, len(labels), self.batch_size):
                batch = slice(b, b + self.batch_size)
                yield inputs[batch], loss_targets[batch], labels[batch]

    def _chunk(
        self, index: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The augmented inputs, loss targets and labels of the images at ``index``."""
        inputs = preprocess(self.images[index], self.boxes[index], augment=self.augment, generator=generator)
        return inputs, self.loss_target(self.targets[index], generator), self.labels[index]


def _made_ahead(chunks: Iterator[tuple[torch.Tensor, ...]], shard: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """``chunks`` (CUDA tensors), each made on a side stream while the caller's stream still
    trains on the one before, so that augmentation overlaps the training steps."""
    consumer = torch.cuda.current_stream(shard.device)
    side = torch.cuda.Stream(shard.device)
    side.wait_stream(consumer)  # the shard and the data were made on the caller's stream
    shard.record_stream(side)  # not reused while the side stream may still read it

    def make() -> Optional[tuple[torch.Tensor, ...]]:
        with torch.cuda.stream(side):
            return next(chunks, None)

    ready = make()
    while ready is not None:
        consumer.wait_stream(side)
        for tensor in ready:  # made on the side stream, freed only once the caller's work on them is done
            tensor.record_stream(consumer)
        following = make()
        yield ready
        ready = following


class EvalSet:
    """The majority-labelled images of a split, preprocessed once (no augmentation) on ``device``.

    Images the majority rule drops are not evaluated. Attributes: ``inputs`` float32
    ``(N, 1, 64, 64)``, ``labels`` int64 ``(N,)``, ``class_counts`` int64 ``(8,)``, ``names``.
    """

    def __init__(self, data: FerFolder, device: Device) -> None:
        keep, _, labels, self.class_counts = _kept(data, EVAL_MODE)
        device = torch.device(device)
        self.names = [name for name, kept in zip(data.names, keep) if kept]
        self.num_images = len(self.names)
        images = torch.from_numpy(data.images[keep]).to(device)
        self.inputs = preprocess(images, torch.from_numpy(data.boxes[keep]).to(device))
        self.labels = torch.from_numpy(labels).to(device)

    def batches(
        self, batch_size: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(inputs, labels)`` minibatches of this rank's shard: every ``world_size``-th
        image from position ``rank``, so the ranks together cover every image exactly once."""
        index = torch.arange(rank, self.num_images, world_size, device=self.inputs.device)
        for start in range(0, len(index), batch_size):
            batch = index[start:start + batch_size]
            yield self.inputs[batch], self.labels[batch]


def summary_table(counts: Mapping[str, np.ndarray]) -> str:
    """A fixed-width table of images per emotion: rows neutral … contempt and total, one
    column per key of ``counts`` (e.g. ``"Train"``, ``"Val"``, ``"Test"``)."""
    rows = [SPLIT_COLUMN_HEADER, *EMOTIONS, "total"]
    columns = {key: [int(v) for v in value] + [int(np.sum(value))] for key, value in counts.items()}
    for key, values in columns.items():
        if len(values) != NUM_EMOTIONS + 1:
            raise ValueError(f"counts[{key!r}] must have {NUM_EMOTIONS} entries, got {len(values) - 1}")
    name_width = max(len(r) for r in rows) + 2
    min_width = len("Train")  # keeps the usual three columns aligned as one block
    widths = {key: max(min_width, len(key), *(len(str(v)) for v in values)) + 2 for key, values in columns.items()}
    lines = [rows[0].ljust(name_width) + "".join(key.rjust(widths[key]) for key in columns)]
    for i, row in enumerate(rows[1:]):
        lines.append(row.ljust(name_width) + "".join(str(columns[key][i]).rjust(widths[key]) for key in columns))
    return "\n".join(lines)
