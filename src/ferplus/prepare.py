"""Turn ``fer2013.csv`` (pixels) and ``fer2013new.csv`` (FER+ votes) into per-split training folders.

For every row that FER+ names, one 8-bit grayscale 48×48 PNG is written into the folder of the
row's ``Usage`` (:data:`USAGE_FOLDERS`), and each folder gets a ``label.csv`` without header,
one line per image in CSV order, in the layout the reference trainer reads::

    fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0

(image name, the face box ``(left, top, right, bottom)``, then the ten votes in
:data:`~ferplus.fer_format.VOTE_CATEGORIES` order).

Both files are validated completely before anything is written. The folders are then built in a
staging folder inside the base folder and swapped in by a protocol that survives a kill at any
instant (see :func:`recover`): a split folder is always the complete old one or the complete new
one, and a rename the kill interrupted is finished by the next run.

Speed: ``fer2013.csv`` is ~300 MB of decimal text. It is read in byte-range chunks whose pixels
numpy's C text reader parses and range-checks, and OpenCV writes the PNGs uncompressed (see
:data:`PNG_COMPRESSION`); large inputs are parsed by a process pool.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
from concurrent.futures import Executor, ProcessPoolExecutor
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
from tqdm import tqdm

from .errors import FerplusError
from .fer_format import (
    FACE_BOX,
    FER_HEADER,
    FERPLUS_HEADER,
    IMAGE_SIZE,
    LABEL_FILE,
    MAX_PIXEL,
    NAME_COLUMN,
    NUM_PIXELS,
    NUM_VOTES,
    PIXELS_COLUMN,
    USAGE_COLUMN,
    USAGE_FOLDERS,
    VOTE_CATEGORIES,
    label_line,
)
from .labels import MAX_VOTES
from .pack import write_pack

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

PathLike = Union[str, os.PathLike]

# A header with none of a file's own columns (Usage is in both) is the wrong file, not a damaged one.
FER_OWN_COLUMNS = ("emotion", PIXELS_COLUMN)
FERPLUS_OWN_COLUMNS = (NAME_COLUMN,) + VOTE_CATEGORIES

FIRST_DATA_LINE = 2  # line 1 of both files is the header
#: Image names become file names and unquoted label.csv fields, so only plain ``.png`` names pass.
IMAGE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.png")
_NUMBERED_NAME = re.compile(r"fer(\d{7})\.png")  # FER+'s own names

#: zlib level of the PNGs: 0 stores the pixels. FER2013 faces are noisy photos that deflate shrinks
#: only from ~2.4 to ~1.8 KB, each file takes one 4 KiB filesystem block either way, and level 1
#: takes ~2.5x the encoding time of level 0.
PNG_COMPRESSION = 0
_PNG_PARAMS = (cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION)

MAX_CHUNK_BYTES = 4 << 20  # bounds each worker's memory and sets the progress bar's granularity
CHUNKS_PER_WORKER = 4  # several chunks per worker so that one slow chunk does not idle the others
PROGRESS_STEP = 1000  # images written between progress bar updates
#: Below this size the process pool's start-up costs more than it saves.
POOL_MIN_BYTES = 16 << 20
FILE_MODE = 0o666  # as open() creates files: the umask decides
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO in the lock file's place must not block the open
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate newlines inside PNGs
STAGING_PREFIX = ".generate-staging-"  # + "<pid>-<random>": lets a later run find a dead run's folder
#: Created first in every staging folder: a later run deletes only folders that hold it (or
#: empty ones of the exact name mkdtemp gives), never a user's folder that happens to match.
STAGING_MARKER = ".made-by-ferplus-generate"
_STAGING_NAME = re.compile(re.escape(STAGING_PREFIX) + r"\d+-[a-z0-9_]{8}")
#: Lock file of the data folder, held by the one generator run that writes it. (The folder
#: itself is locked by readers and by the generator's swap: :func:`generation_lock`.)
RUN_LOCK = ".generate.lock"
#: Created in a staging folder once all its split folders are complete: from then on the new
#: splits win, and whoever finds the staging folder finishes moving them in.
COMPLETE_MARKER = "complete"
#: Where the replaced split folders wait, inside the staging folder, until every new one is in place.
PREVIOUS_FOLDER = "previous"
#: Start method of the parsing pool: a fresh interpreter per worker. Not fork: a forked worker
#: would inherit the caller's threads (numpy's, tqdm's monitor, torch's pools) in whatever state
#: they were. The fork server parsed the full fer2013.csv ~0.7 s faster, but its workers and the
#: server outlived a killed generator by more than 5 s in 2 of 10 fault-injection kills; spawned
#: workers watch the generator itself and leave none. Threads do not parse in parallel (numpy's
#: text reader holds the GIL).
POOL_START_METHOD = "spawn"


@dataclass
class _Labels:
    """The validated rows of ``fer2013new.csv``."""

    usages: List[str] = field(default_factory=list)
    names: List[str] = field(default_factory=list)
    votes: List[List[int]] = field(default_factory=list)
    lines: List[int] = field(default_factory=list)  # physical line of each row, for messages


class SplitData(NamedTuple):
    """The images of one split read from the CSV pair: ``names``, ``votes`` int64 ``(N, 10)``,
    ``images`` uint8 ``(N, 48, 48)``."""

    names: List[str]
    votes: np.ndarray
    images: np.ndarray


@dataclass
class _ChunkResult:
    """What a worker parsed from one byte range of ``fer2013.csv``."""

    num_rows: int
    usages: np.ndarray  # int8 index into USAGE_FOLDERS per row
    images: np.ndarray  # uint8 (num_rows, 48, 48)
    error: Optional[Tuple[int, str]] = None  # (row index within the chunk, message): stops the run


def generate_training_data(
    base_folder: PathLike,
    fer_path: PathLike,
    ferplus_path: PathLike,
    progress: bool = True,
    *,
    workers: int = 1,
) -> Dict[str, Dict[str, Any]]:
    """Write ``FER2013Train/``, ``FER2013Valid/`` and ``FER2013Test/`` (PNGs + ``label.csv``) under ``base_folder``.

    Args:
        base_folder: folder that receives the three split folders (created if needed). Only those
            three are replaced; anything else in it is left alone. What a killed earlier run left
            there is finished first (:func:`recover`), and a second run on it at the same time
            fails.
        fer_path: the Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``).
        ferplus_path: the FER+ ``fer2013new.csv`` (``Usage,Image name,<ten vote columns>``), the
            same rows in the same order.
        progress: show progress bars on stderr.
        workers: processes that parse ``fer2013.csv``; 1 (the default) parses in-process, so
            the call works anywhere (a script without ``if __name__ == "__main__":``, a notebook,
            a REPL). More start a process pool, which imports the caller's main module again:
            only under such a guard. :func:`auto_workers` is what the generator's CLI uses.

    Returns:
        Per split folder, in :data:`USAGE_FOLDERS` order: ``usage``, ``rows`` (CSV rows of that
        usage), ``images`` (PNGs written), ``skipped`` (rows without an image name) and
        ``duplicates`` (this split's rows whose name appeared earlier in the file: the image is
        written once, with the votes of its first row).

    Raises:
        FerplusError: a file is missing or malformed, or the two files disagree, or another run
            is writing ``base_folder``; nothing has been written then.
    """
    base = Path(base_folder)
    splits, summary = _read_csv_pair(Path(fer_path), Path(ferplus_path), progress, workers)
    base.mkdir(parents=True, exist_ok=True)
    with _exclusive(base):
        _finish_killed_runs(base)
        _replace_splits(base, splits, progress)
    return summary


def read_splits(
    fer_path: PathLike, ferplus_path: PathLike, progress: bool = False, *, workers: int = 1
) -> Dict[str, SplitData]:
    """What :func:`generate_training_data` would write, in memory and without writing anything.

    Returns, per split folder in :data:`USAGE_FOLDERS` order, the :class:`SplitData` of the
    images that folder would hold (same rows, same order, duplicates written once). The files are
    validated exactly as for :func:`generate_training_data` (same ``FerplusError`` messages);
    ``fer_path`` may also be Kaggle's ``icml_face_data.csv`` (columns ``emotion, Usage, pixels``).
    ``workers`` as for :func:`generate_training_data` (in-process by default).
    """
    return _read_csv_pair(Path(fer_path), Path(ferplus_path), progress, workers)[0]


def recover(base_folder: PathLike) -> None:
    """Finish what generator runs killed in ``base_folder`` left behind (every run does this before it writes).

    A run writes its split folders into a staging folder, creates :data:`COMPLETE_MARKER` there,
    then renames each old split folder into the staging folder's :data:`PREVIOUS_FOLDER` and the
    new one into its place; only when all three new ones are in place are the old ones deleted.
    A killed run's staging folder is thus finished forward when it holds the marker (its new
    splits are complete; a split missing from ``base_folder`` is one of them, not yet moved in),
    and deleted otherwise (no old split was moved yet).

    Raises:
        FerplusError: another run is writing ``base_folder``.
    """
    base = Path(base_folder)
    if base.is_dir():
        with _exclusive(base):
            _finish_killed_runs(base)


def auto_workers(fer_path: PathLike) -> int:
    """Parsing processes worth starting for ``fer_path``: one per CPU for a large file, else 1
    (below :data:`POOL_MIN_BYTES` the pool's start-up costs more than it saves)."""
    try:
        large = os.stat(fer_path).st_size >= POOL_MIN_BYTES
    except OSError:  # reported with the other checks of the file
        large = False
    return _cpu_count() if large else 1


def format_summary(summary: Dict[str, Dict[str, Any]]) -> str:
    """The summary of :func:`generate_training_data` as a small table, plus the duplicate names."""
    lines = [f"{'folder':<14}{'usage':<13}{'rows':>7}{'images':>8}{'skipped':>9}{'duplicates':>12}"]
    for folder, s in summary.items():
        lines.append(
            f"{folder:<14}{s['usage']:<13}{s['rows']:>7}{s['images']:>8}{s['skipped']:>9}{len(s['duplicates']):>12}"
        )
    lines.append("skipped: rows without an image name (FER+ keeps no image for them)")
    for folder, s in summary.items():
        if s["duplicates"]:
            lines.append(f"{folder}: written once, with the first row's votes: {', '.join(s['duplicates'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading and validating


def _split_header(text: str) -> List[str]:
    return [name.strip().strip('"') for name in text.split(",")]


def _check_unique_columns(columns: Sequence[str], path: Path) -> None:
    """A column named twice would leave it to chance which one is read."""
    twice = next((name for i, name in enumerate(columns) if name in columns[:i]), None)
    if twice is not None:
        raise FerplusError(f"{path}: line 1: column {twice!r} appears more than once")


def _read_csv_pair(
    fer_path: Path, ferplus_path: Path, progress: bool, workers: int
) -> Tuple[Dict[str, SplitData], Dict[str, Dict[str, Any]]]:
    """Validate both files completely; returns the splits and :func:`generate_training_data`'s summary."""
    for path in (fer_path, ferplus_path):
        if not path.is_file():
            raise FerplusError(f"{path}: no such file")
    header_end, pixels_index, usage_index, num_columns = _read_fer_header(fer_path)
    size = fer_path.stat().st_size
    ranges = _chunk_ranges(fer_path, header_end, size, workers)
    tasks = [(str(fer_path), start, end, num_columns, pixels_index, usage_index) for start, end in ranges]

    with _executor(workers) as pool:
        # The pool parses fer2013.csv while this process reads the (small) label file.
        parsed = _map(pool, _parse_chunk, tasks)
        labels = _read_ferplus(ferplus_path)
        usages, images = _collect_chunks(parsed, ranges, fer_path, progress)
    _check_rows_agree(labels, usages, fer_path, ferplus_path)
    if not labels.usages:
        raise FerplusError(f"{ferplus_path}: no rows after the header (and none in {fer_path}): nothing to prepare")
    _check_names_number_rows(labels, ferplus_path)
    plan, summary = _plan_outputs(labels)
    splits = {
        folder: SplitData(
            names=[labels.names[r] for r in rows],
            votes=np.array([labels.votes[r] for r in rows], dtype=np.int64).reshape(-1, NUM_VOTES),
            images=images[rows],
        )
        for folder, rows in plan.items()
    }
    return splits, summary


def _read_fer_header(path: Path) -> Tuple[int, int, int, int]:
    """Check ``fer2013.csv``'s header; returns (byte offset after it, pixels index, Usage index, columns)."""
    with open(path, "rb") as f:
        raw = f.readline()
    try:
        header = raw.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise FerplusError(f"{path}: not a CSV text file (expected the FER2013 header {FER_HEADER})") from None
    columns = _split_header(header)
    if not set(FER_OWN_COLUMNS) & set(columns):
        raise FerplusError(f"{path}: line 1: not a FER2013 CSV (expected the header {FER_HEADER})")
    _check_unique_columns(columns, path)
    missing = [name for name in (PIXELS_COLUMN, USAGE_COLUMN) if name not in columns]
    if missing:
        raise FerplusError(f"{path}: line 1: missing column {missing[0]!r} (expected the header {FER_HEADER})")
    return len(raw), columns.index(PIXELS_COLUMN), columns.index(USAGE_COLUMN), len(columns)


def _read_ferplus(path: Path) -> _Labels:
    """Read and validate every row of ``fer2013new.csv``."""
    labels = _Labels()
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise FerplusError(f"{path}: empty file (expected the FER+ header {FERPLUS_HEADER})")
            header = [name.strip() for name in header]
            if not set(FERPLUS_OWN_COLUMNS) & set(header):
                raise FerplusError(f"{path}: line 1: not a FER+ label CSV (expected the header {FERPLUS_HEADER})")
            _check_unique_columns(header, path)
            missing = [name for name in (USAGE_COLUMN,) + FERPLUS_OWN_COLUMNS if name not in header]
            if missing:
                raise FerplusError(
                    f"{path}: line 1: missing column {missing[0]!r} (expected the header {FERPLUS_HEADER})"
                )
            usage_i, name_i = header.index(USAGE_COLUMN), header.index(NAME_COLUMN)
            vote_i = [header.index(name) for name in VOTE_CATEGORIES]
            for row in reader:
                line = reader.line_num
                where = f"{path}: line {line}"
                if not row:
                    raise FerplusError(f"{where}: empty line")
                if len(row) != len(header):
                    raise FerplusError(f"{where}: expected {len(header)} fields, found {len(row)}")
                usage, name = row[usage_i], row[name_i]
                if usage not in USAGE_FOLDERS:
                    raise FerplusError(f"{where}: {_unknown_usage(usage)}")
                if name and not IMAGE_NAME_PATTERN.fullmatch(name):
                    raise FerplusError(f"{where}: image name {name!r} is not a plain .png file name")
                labels.usages.append(usage)
                labels.names.append(name)
                labels.votes.append([_parse_vote(row[i], VOTE_CATEGORIES[k], where) for k, i in enumerate(vote_i)])
                labels.lines.append(line)
    except UnicodeDecodeError:
        raise FerplusError(f"{path}: not a CSV text file (expected the FER+ header {FERPLUS_HEADER})") from None
    except csv.Error as e:
        raise FerplusError(f"{path}: not a readable CSV file ({e})") from None
    return labels


def _check_names_number_rows(labels: _Labels, path: Path) -> None:
    """FER+ names image ``fer%07d.png`` by its row: rows reordered would pair votes with other faces.

    In the shipped ``fer2013new.csv`` the numbers of the names listed once grow strictly from row
    to row (they lag the row index a little where rows have no image; the four names listed twice
    break the order and are left out). A subset of its rows keeps that order, reordered rows do not.
    Other naming schemes are not checked.
    """
    listed = Counter(labels.names)
    previous: Optional[Tuple[int, str]] = None
    for row, name in enumerate(labels.names):
        match = _NUMBERED_NAME.fullmatch(name)
        if match is None or listed[name] > 1:
            continue
        number = int(match.group(1))
        if previous is not None and number <= previous[0]:
            raise FerplusError(
                f"{path}: line {labels.lines[row]}: image name {name} comes after {previous[1]}; FER+ numbers "
                "its images in row order, so the rows were reordered"
            )
        previous = (number, name)


def _unknown_usage(usage: str) -> str:
    return f"unknown Usage {usage!r} (expected {', '.join(USAGE_FOLDERS)})"


def _parse_vote(text: str, category: str, where: str) -> int:
    if text.isascii() and text.isdigit():
        if int(text) > MAX_VOTES:  # the trainer's reader would refuse the label.csv line
            raise FerplusError(f"{where}: vote count {text} for {category!r} is larger than {MAX_VOTES}")
        return int(text)
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        raise FerplusError(f"{where}: negative vote count {text} for {category!r}")
    raise FerplusError(f"{where}: vote count {text!r} for {category!r} is not a whole number")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _chunk_ranges(path: Path, start: int, size: int, workers: int) -> List[Tuple[int, int]]:
    """Split the bytes after the header into ranges that each end at a line end."""
    num_chunks = max(workers * CHUNKS_PER_WORKER if workers > 1 else 1, math.ceil((size - start) / MAX_CHUNK_BYTES))
    step = max(1, math.ceil((size - start) / num_chunks))
    ranges = []
    with open(path, "rb") as f:
        while start < size:
            f.seek(min(start + step, size))
            f.readline()  # move on to the end of the line the nominal boundary falls in
            end = min(f.tell(), size)
            ranges.append((start, end))
            start = end
    return ranges


def _split_line(line: bytes) -> List[bytes]:
    if b'"' in line:  # quoted fields are unusual here, so only they take the slower csv module
        return [value.encode("latin-1") for value in next(csv.reader([line.decode("latin-1")]))]
    return line.split(b",")


def _parse_chunk(task: Tuple[str, int, int, int, int, int]) -> _ChunkResult:
    """Parse and validate the rows of one byte range of ``fer2013.csv`` (runs in a worker)."""
    path, start, end, num_columns, pixels_index, usage_index = task
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the chunk's last line end
    usage_codes = {name.encode(): code for code, name in enumerate(USAGE_FOLDERS)}
    usages = np.empty(len(lines), dtype=np.int8)
    fields = []
    empty = np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)

    def fail(row: int, message: str) -> _ChunkResult:
        return _ChunkResult(len(lines), usages, empty, (row, message))

    for row, line in enumerate(lines):
        line = line.rstrip(b"\r")
        if not line.strip():
            return fail(row, "empty line")
        values = _split_line(line)
        if len(values) != num_columns:
            return fail(row, f"expected {num_columns} comma-separated fields, found {len(values)}")
        usage = values[usage_index].strip()
        if usage not in usage_codes:
            return fail(row, _unknown_usage(usage.decode("latin-1")))
        usages[row] = usage_codes[usage]
        pixels = values[pixels_index].strip()
        # Counting separators is ~100x cheaper than splitting the field; numpy checks the values.
        if pixels.count(b" ") != NUM_PIXELS - 1:
            return fail(row, _pixel_problem(pixels))
        fields.append(pixels)
    if not fields:
        return _ChunkResult(0, usages, empty)
    try:
        # numpy's C text reader rejects anything but integers in 0..255 (uint8) and counts columns.
        values = np.loadtxt(io.BytesIO(b"\n".join(fields)), dtype=np.uint8, delimiter=" ", comments=None, ndmin=2)
    except ValueError:
        row = next((i for i, f in enumerate(fields) if _pixel_problem(f)), 0)
        return fail(row, _pixel_problem(fields[row]) or "pixels could not be read")
    images = values.reshape(len(fields), IMAGE_SIZE, IMAGE_SIZE)
    return _ChunkResult(len(lines), usages, images)


def _pixel_problem(pixels: bytes) -> str:
    """Why a pixel field is invalid, or "" when it is valid (the slow path, for messages)."""
    values = pixels.split(b" ") if pixels else []
    for value in values:
        if not value.isdigit():
            found = value.decode("latin-1")[:20]
            return f"pixels must be integers in 0..{MAX_PIXEL} separated by single spaces, found {found!r}"
        if int(value) > MAX_PIXEL:
            return f"pixel value {int(value)} is outside 0..{MAX_PIXEL}"
    if len(values) != NUM_PIXELS:
        return f"pixels holds {len(values)} values, expected {NUM_PIXELS} (a {IMAGE_SIZE}x{IMAGE_SIZE} image)"
    return ""


def _collect_chunks(
    parsed: Iterable[_ChunkResult], ranges: Sequence[Tuple[int, int]], path: Path, progress: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """Join the chunk results in file order; the first invalid row becomes a :class:`FerplusError`."""
    usages, images = [], []
    line = FIRST_DATA_LINE
    with tqdm(total=ranges[-1][1] - ranges[0][0] if ranges else 0, unit="B", unit_scale=True,
              desc=f"reading {path.name}", disable=not progress, file=sys.stderr) as bar:
        for result, (start, end) in zip(parsed, ranges):
            if result.error is not None:
                row, message = result.error
                raise FerplusError(f"{path}: line {line + row}: {message}")
            usages.append(result.usages)
            images.append(result.images)
            line += result.num_rows
            bar.update(end - start)
    if not usages:
        return np.empty(0, np.int8), np.empty((0, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return np.concatenate(usages), np.concatenate(images)


def _check_rows_agree(labels: _Labels, usages: np.ndarray, fer_path: Path, ferplus_path: Path) -> None:
    """Both files must hold the same rows: same count, same ``Usage`` on each row."""
    if len(labels.usages) != len(usages):
        raise FerplusError(
            f"{ferplus_path}: has {len(labels.usages)} rows but {fer_path} has {len(usages)}; "
            "the two files must list the same images in the same order"
        )
    usage_names = list(USAGE_FOLDERS)
    codes = np.array([usage_names.index(u) for u in labels.usages], dtype=np.int8)
    mismatch = np.flatnonzero(codes != usages)
    if len(mismatch):
        row = int(mismatch[0])
        raise FerplusError(
            f"{ferplus_path}: line {labels.lines[row]}: Usage {labels.usages[row]!r} disagrees with "
            f"{fer_path} line {FIRST_DATA_LINE + row} ({usage_names[usages[row]]!r})"
        )


# ---------------------------------------------------------------------------------------------
# Writing


def _plan_outputs(labels: _Labels) -> Tuple[Dict[str, List[int]], Dict[str, Dict[str, Any]]]:
    """Which rows become images in which folder (first row of each name), and the summary."""
    plan: Dict[str, List[int]] = {folder: [] for folder in USAGE_FOLDERS.values()}
    summary = {
        folder: {"usage": usage, "rows": 0, "images": 0, "skipped": 0, "duplicates": []}
        for usage, folder in USAGE_FOLDERS.items()
    }
    seen = set()
    for row, (usage, name) in enumerate(zip(labels.usages, labels.names)):
        folder = USAGE_FOLDERS[usage]
        s = summary[folder]
        s["rows"] += 1
        if not name:
            s["skipped"] += 1
        elif name in seen:
            s["duplicates"].append(name)
        else:
            seen.add(name)
            plan[folder].append(row)
            s["images"] += 1
    return plan, summary


def encode_png(image: np.ndarray) -> np.ndarray:
    """The bytes of an 8-bit grayscale PNG of the 2-D uint8 ``image``, at :data:`PNG_COMPRESSION`."""
    ok, png = cv2.imencode(".png", image, _PNG_PARAMS)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.dtype} image of shape {image.shape} as PNG")
    return png


def _write_pngs(folder: Path, names: Sequence[str], images: np.ndarray) -> None:
    """Write ``images[i]`` as ``folder/names[i]``."""
    for name, image in zip(names, images):
        png = encode_png(image)
        # os.open skips the buffered file object that open() builds: with ~36k tiny files the
        # per-file overhead is a large part of the run.
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_BINARY, FILE_MODE)
        try:
            written = os.write(fd, png)
        except OSError as e:  # os.write's error names no file; the user's message must
            raise OSError(e.errno, e.strerror, str(path)) from None
        finally:
            os.close(fd)
        if written != png.nbytes:  # a short write to a regular file means the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _write_splits(staging: Path, splits: Dict[str, SplitData], progress: bool) -> None:
    """Write every split folder (PNGs, then label.csv, then the pack of :mod:`ferplus.pack`) into ``staging``.

    One process does this: the files of a split share a directory, whose lock makes parallel
    writers wait on each other (measured slower with two).
    """
    total = sum(len(split.names) for split in splits.values())
    with tqdm(total=total, unit="img", desc="writing PNGs", disable=not progress, file=sys.stderr) as bar:
        for folder, split in splits.items():
            out = staging / folder
            out.mkdir()
            for i in range(0, len(split.names), PROGRESS_STEP):
                part = slice(i, i + PROGRESS_STEP)
                _write_pngs(out, split.names[part], split.images[part])
                bar.update(len(split.names[part]))
            label_bytes = "".join(label_line(name, votes) for name, votes in zip(split.names, split.votes)).encode()
            with open(out / LABEL_FILE, "wb") as f:
                f.write(label_bytes)
            boxes = np.tile(np.array(FACE_BOX, dtype=np.int64), (len(split.names), 1))
            write_pack(out, label_bytes, split.names, boxes, split.votes, split.images)


def _replace_splits(base: Path, splits: Dict[str, SplitData], progress: bool) -> None:
    """Write the split folders into a new staging folder in ``base``, mark it complete, and swap them in."""
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=base))
    try:
        (staging / STAGING_MARKER).touch(exist_ok=False)
        _write_splits(staging, splits, progress)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    with generation_lock(base, exclusive=True):
        (staging / COMPLETE_MARKER).touch(exist_ok=False)
        # From the marker on, a failure leaves the staging folder for the next run to finish.
        _move_into_place(staging, base)
    shutil.rmtree(staging)


def _move_into_place(staging: Path, base: Path) -> None:
    """Swap the complete split folders of ``staging`` in, then unmark ``staging`` (the caller
    deletes it, with the old folders in it, after letting go of the generation lock).

    Each swap is two renames (old folder into :data:`PREVIOUS_FOLDER`, new folder into place),
    and every step is skipped when already done, so a call after a kill at any point finishes
    the job. The marker goes only once all new ones are in place: an unmarked staging folder
    never holds a new split, only old ones or none, and is simply deleted.
    """
    previous = staging / PREVIOUS_FOLDER
    previous.mkdir(exist_ok=True)
    for folder in USAGE_FOLDERS.values():
        new, target = staging / folder, base / folder
        if not new.exists():
            continue  # moved in by an earlier call
        if target.exists() or target.is_symlink():
            os.replace(target, previous / folder)
        os.replace(new, target)
    (staging / COMPLETE_MARKER).unlink()


def _finish_killed_runs(base: Path) -> None:
    """Finish or delete the staging folders in ``base`` (see :func:`recover`); the caller holds the lock.

    Only folders this tool made are touched: those holding :data:`STAGING_MARKER`, and empty ones
    with exactly the name it gives (a run killed between creating one and marking it).
    """
    for staging in sorted(base.glob(f"{STAGING_PREFIX}*")):
        if not staging.is_dir() or staging.is_symlink():
            continue
        if not (staging / STAGING_MARKER).is_file():
            if _STAGING_NAME.fullmatch(staging.name) and not any(staging.iterdir()):
                staging.rmdir()
            continue
        if (staging / COMPLETE_MARKER).exists():
            with generation_lock(base, exclusive=True):
                _move_into_place(staging, base)
        shutil.rmtree(staging)


def unfinished_swap(base: Path) -> Optional[Path]:
    """A staging folder of ``base`` whose swap a killed generator left half done, or None.

    Call it holding the shared :func:`generation_lock`: a live generator holds the lock
    exclusively while its staging folder is marked complete.
    """
    for staging in base.glob(f"{STAGING_PREFIX}*"):
        if (staging / STAGING_MARKER).is_file() and (staging / COMPLETE_MARKER).exists():
            return staging
    return None


@contextlib.contextmanager
def generation_lock(base: Path, exclusive: bool) -> Iterator[None]:
    """Hold a lock on the data folder ``base`` itself, waiting for it: shared by readers while
    they read its splits, exclusive by the generator while it swaps new split folders in.

    A reader so sees one whole generation, and needs no write access. Without ``fcntl``
    (Windows), or on a file system that cannot lock a folder, nothing is locked; nor is a
    ``base`` that cannot be opened (missing: the caller reports it).
    """
    fd = None
    if fcntl is not None:
        try:
            fd = os.open(base, os.O_RDONLY)
        except OSError:
            pass
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            except OSError:
                pass  # no locks here (some network file systems)
        yield
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def _exclusive(base: Path) -> Iterator[None]:
    """Hold the exclusive :data:`RUN_LOCK` of ``base`` while in the block: one generator run at a time.

    The kernel drops the lock when the process dies, however it dies, so a staging folder found
    by the holder belongs to a dead run. Without ``fcntl`` (Windows), or on a file system that
    cannot lock, nothing is locked and one run at a time is the user's care.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(base / RUN_LOCK, os.O_RDWR | os.O_CREAT | _O_NONBLOCK, FILE_MODE)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FerplusError(f"{base / RUN_LOCK}: not a regular file; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            message = "another run is writing the split folders here; try again when it ends"
            raise FerplusError(f"{base}: {message}") from None
        except OSError:
            pass  # no locks here (some network file systems)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


# ---------------------------------------------------------------------------------------------
# Running tasks in-process or on a pool


@contextlib.contextmanager
def _executor(workers: int) -> Iterator[Optional[Executor]]:
    """A process pool for ``workers > 1``, else None (work in-process).

    The workers start by :data:`POOL_START_METHOD` and end themselves when this process dies
    (:func:`_exit_with_parent`). On an error the queued tasks are cancelled rather than run to the end.
    """
    if workers <= 1:
        yield None
        return
    context = multiprocessing.get_context(POOL_START_METHOD)
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with_parent)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold back SIGINT in this thread meanwhile; processes started here keep it blocked for life.

    Ctrl-C reaches the whole process group: a worker still importing would print a traceback of
    its own. Started while SIGINT is blocked, the workers never see it (they end with the pool,
    or with this process); a Ctrl-C that came meanwhile is delivered here once the block ends.
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exit_with_parent() -> None:
    """Pool worker initializer: exit as soon as the process that started the pool dies.

    A worker waiting for its next task would otherwise wait forever after a kill -9 of the
    parent. The parent's sentinel becomes readable when the parent is gone.
    """
    sentinel = multiprocessing.parent_process().sentinel
    threading.Thread(target=_exit_when_ready, args=(sentinel,), daemon=True).start()


def _exit_when_ready(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(1)


def _map(pool: Optional[Executor], fn: Callable, tasks: Sequence) -> Iterator:
    """``fn`` over ``tasks`` in order: lazily in-process, or submitted to the pool all at once."""
    if pool is None:
        return map(fn, tasks)
    with _interrupts_held():  # the pool starts its workers as the tasks are submitted
        return pool.map(fn, tasks)
