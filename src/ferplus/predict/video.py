"""Emotions through a video or a live camera: frames streamed, faces found and tracked, and scored
in batches.

Frames are read one at a time (a one-hour video never sits in memory) with their timestamps from
the container, so variable frame rates come out right. Faces are searched for in the whole frame
(on a copy shrunk to ``detect_side`` pixels) every ``detect_every`` sampled frames and only near
each tracked face in between, which costs a fraction of a full search; the crops of several
frames are then scored in one call of the network.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import cv2
import numpy as np

from ..errors import EXIT_FAILURE, FerplusError
from ..runtime import ScoreFn
from .faces import crop_faces, detect_face_near, detect_faces, face_probabilities, to_gray
from .outputs import FacePrediction
from .tracking import Smoother, Tracker, box_iou

PathLike = Union[str, os.PathLike]

#: Files a folder argument contributes as videos (case-insensitive); any file named directly that
#: is not an image is tried as a video too.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".ogv")
#: Sampled frames from one search of the whole frame to the next; tracked faces are looked for
#: near where they were in between.
DETECT_EVERY = 5
#: Frames are searched for faces on a copy shrunk to this side (faces of at least
#: MIN_FACE × side / DETECT_SIDE pixels are found: 72 pixels in a 1080p frame).
DETECT_SIDE = 640
#: Sampled frames whose faces go through the network together.
BATCH_FRAMES = 16
#: Two boxes found near tracks that overlap this much are one face found twice.
SAME_FACE_IOU = 0.5
#: The rate assumed for a video or camera that reports none.
FALLBACK_FPS = 30.0
MS = 1000.0
#: Lines of OpenCV's and FFmpeg's own messages quoted in a one-line error: the cause and its outcome.
MESSAGE_LINES = 2
# OpenCV's log lines start "[ERROR:0@0.095] global cap_ffmpeg_impl.hpp:1430 open "; FFmpeg's
# "[mov,mp4,m4a @ 0x55f84bdca6c0] ". The rest is the news.
_OPENCV_PREFIX = re.compile(r"^\[\s*\w+:\d+@[\d.]+\]\s+global\s+\S+\s+\S+\s+")
_FFMPEG_PREFIX = re.compile(r"^\[([^\]@]+?) @ 0x[0-9a-fA-F]+\]\s*")


class VideoError(FerplusError):
    """A video or camera that cannot be opened or read to its end (exit status 1: other sources go on)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILURE)


class NativeMessages:
    """What OpenCV and FFmpeg print to the process's stderr, kept off the terminal and kept for the
    one-line message that names the file (``with messages: ...`` around each call into them)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._saved: Optional[int] = None
        self._read = 0

    def __enter__(self) -> "NativeMessages":
        import sys

        sys.stderr.flush()
        with contextlib.suppress(OSError):  # no stderr at all: nothing to keep off it
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
            self._saved = None

    def said(self) -> str:
        """The last :data:`MESSAGE_LINES` distinct lines printed since the previous call, without the
        log prefixes of OpenCV and FFmpeg, joined by "; " ('' if none)."""
        self._file.seek(self._read)
        text = self._file.read().decode("utf-8", "replace")
        self._read = self._file.tell()
        lines: List[str] = []
        for line in text.splitlines():
            line = _FFMPEG_PREFIX.sub(r"\1: ", _OPENCV_PREFIX.sub("", line.strip()))
            if line and line not in lines:
                lines.append(line)
        return "; ".join(lines[-MESSAGE_LINES:])

    def close(self) -> None:
        self._file.close()


@dataclass
class Frame:
    """One frame of a video: its number from 0, its time in seconds, whether it is sampled for
    scoring, and its BGR pixels (None when it was skipped without decoding)."""

    index: int
    time_s: float
    sampled: bool
    image: Optional[np.ndarray]


class VideoSource:
    """A video file or a camera, opened with OpenCV; :class:`VideoError` if it cannot be opened."""

    def __init__(self, source: Union[PathLike, int]) -> None:
        self.camera = isinstance(source, int)
        self.name = f"camera {source}" if self.camera else str(source)
        self.messages = NativeMessages()
        with self.messages:
            self.capture = cv2.VideoCapture(source if self.camera else str(source))
        if not self.capture.isOpened():
            said = self.messages.said()
            self.close()
            what = "cannot be opened" if self.camera else "cannot be opened as a video"
            raise VideoError(f"{self.name}: {what} (OpenCV: {said or 'no video backend reads it'})")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if math.isfinite(fps) and fps > 0 else FALLBACK_FPS
        self.width = int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        #: What the container says; 0 for cameras and streams that do not know.
        self.frame_count = 0 if self.camera else max(0, int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        self.codec = _fourcc(self.capture.get(cv2.CAP_PROP_FOURCC))
        #: Frames read so far by :meth:`frames`, decoded or skipped.
        self.frames_read = 0

    def frames(self, sample: Callable[[int, float], bool], decode_all: bool = False) -> Iterator[Frame]:
        """Every frame in order, marked sampled where ``sample(index, time_s)`` is true; the others
        are skipped without decoding unless ``decode_all``. :class:`VideoError` at the end if the
        video stops before its first frame or before the frame count its container gives."""
        start = time.monotonic()
        index = 0
        while True:
            with self.messages:
                grabbed = self.capture.grab()
            if not grabbed:
                break
            # A camera's own clock may start anywhere; a file's timestamps come from its container.
            time_s = time.monotonic() - start if self.camera else self.capture.get(cv2.CAP_PROP_POS_MSEC) / MS
            sampled, image = sample(index, time_s), None
            if sampled or decode_all:
                with self.messages:
                    ok, image = self.capture.retrieve()
                if not ok:
                    break
            index += 1
            self.frames_read = index
            yield Frame(index - 1, time_s, sampled, image)
        said = self.messages.said()
        said = f"; OpenCV: {said}" if said else ""
        if index == 0:
            raise VideoError(f"{self.name}: no frame could be decoded (codec {self.codec or 'unknown'}{said})")
        if index + 1 < self.frame_count:  # one frame of slack: some containers only estimate their count
            raise VideoError(f"{self.name}: ended after {index} of {self.frame_count} frames (truncated or damaged{said})")

    def close(self) -> None:
        """Let go of the file or camera."""
        if getattr(self, "capture", None) is not None:
            self.capture.release()
        self.messages.close()


def _fourcc(value: float) -> str:
    """A FOURCC code as its four letters ('' for none)."""
    code = int(value) if math.isfinite(value) else 0
    return "".join(chr((code >> (8 * k)) & 0xFF) for k in range(4)).strip("\0 ") if code > 0 else ""


class Sampler:
    """Which frames are scored: every ``every``-th, and at most ``fps`` a second of video time."""

    def __init__(self, every: int = 1, fps: Optional[float] = None) -> None:
        if every < 1:
            raise FerplusError(f"--every {every}: give a whole number of at least 1")
        if fps is not None and not (math.isfinite(fps) and fps > 0):
            raise FerplusError(f"--fps {fps}: give a positive number of frames a second")
        self.every = every
        self.period = 1.0 / fps if fps else 0.0
        self._next_s = -math.inf

    def __call__(self, index: int, time_s: float) -> bool:
        """Whether frame ``index`` at ``time_s`` is scored (call once per frame, in order)."""
        if index % self.every or time_s < self._next_s:
            return False
        if self.period:
            # The next slot after this one, on a grid from this time: no drift, no burst after a gap.
            self._next_s = time_s + self.period * (1 - 1e-6)
        return True


class FaceFinder:
    """The face boxes of each sampled frame and their track ids."""

    def __init__(
        self, detect: bool = True, boxes: Optional[Dict[int, np.ndarray]] = None,
        detect_every: int = DETECT_EVERY, detect_side: int = DETECT_SIDE,
    ) -> None:
        """``boxes`` (frame number → ``(N, 4)`` left, top, right, bottom) replaces detection; without
        ``detect`` the whole frame is one face."""
        if detect_every < 1:
            raise FerplusError(f"--detect-every {detect_every}: give a whole number of at least 1")
        self.detect = detect
        self.boxes = boxes
        self.detect_every = detect_every
        self.detect_side = detect_side
        self.tracker = Tracker()
        self._since_search = 0

    def __call__(self, index: int, gray: np.ndarray) -> Tuple[np.ndarray, List[int]]:
        """``(boxes (N, 4), track ids)`` for sampled frame ``index``."""
        if self.boxes is not None:
            boxes = self.boxes.get(index, np.zeros((0, 4), dtype=np.int64))
        elif not self.detect:
            boxes = np.array([[0, 0, gray.shape[1], gray.shape[0]]], dtype=np.int64)
        elif not self.tracker.tracks or self._since_search % self.detect_every == 0:
            boxes = detect_faces(gray, self.detect_side)
            self._since_search = 0
        else:
            boxes = self._search_near_tracks(gray)
        self._since_search += 1
        return boxes, self.tracker.update(boxes)

    def _search_near_tracks(self, gray: np.ndarray) -> np.ndarray:
        found: List[np.ndarray] = []
        for track in self.tracker.tracks:
            box = detect_face_near(gray, track.box)
            if box is not None and not (found and box_iou(np.array(found), box).max() > SAME_FACE_IOU):
                found.append(box)
        return np.array(found, dtype=np.int64).reshape(-1, 4)


@dataclass
class FrameResult:
    """One frame's faces (None for a frame that was not sampled) and, if asked for, its pixels."""

    index: int
    time_s: float
    faces: Optional[List[FacePrediction]]
    image: Optional[np.ndarray] = None


def predict_video(
    source: Union[PathLike, int, VideoSource],
    scorer: ScoreFn,
    finder: Optional[FaceFinder] = None,
    sampler: Optional[Sampler] = None,
    smooth_s: float = 0.0,
    batch_frames: int = BATCH_FRAMES,
    all_frames: bool = False,
) -> Iterator[FrameResult]:
    """Emotion probabilities of the tracked faces of a video, frame by frame, in order.

    ``source`` is a video file, a camera number or an open :class:`VideoSource` (left open).
    ``finder`` gives the boxes (default: detection with tracking; a :class:`FaceFinder` with
    ``boxes`` scores given ones), ``sampler`` the frames scored (default: all), ``smooth_s`` the
    seconds over which each track's probabilities are averaged (0: raw). The faces of up to
    ``batch_frames`` sampled frames are scored in one network call, so results come that many
    frames late. With ``all_frames``, frames that were not sampled are yielded too (``faces``
    None) and every result carries its pixels, for drawing a whole video. A video that cannot be
    read to its end raises :class:`VideoError` after the frames it gave.
    """
    video = source if isinstance(source, VideoSource) else VideoSource(source)
    finder = finder or FaceFinder()
    sampler = sampler or Sampler()
    smoother = Smoother(smooth_s)
    pending: List[Tuple[FrameResult, Optional[np.ndarray], List[int], Optional[np.ndarray]]] = []
    stopped: Optional[VideoError] = None
    try:
        try:
            for frame in video.frames(sampler, decode_all=all_frames):
                result = FrameResult(frame.index, frame.time_s, None, frame.image if all_frames else None)
                if frame.sampled:
                    gray = to_gray(frame.image)
                    boxes, ids = finder(frame.index, gray)
                    pending.append((result, boxes, ids, crop_faces(gray, boxes)))
                elif all_frames:
                    pending.append((result, None, [], None))
                else:
                    continue
                if sum(boxes is not None for _, boxes, _, _ in pending) >= batch_frames:
                    yield from _score(pending, scorer, smoother)
        except VideoError as e:  # the frames read so far are still reported
            stopped = e
        yield from _score(pending, scorer, smoother)
        if stopped is not None:
            raise stopped
    finally:
        if video is not source:
            video.close()


def _score(
    pending: List[Tuple[FrameResult, Optional[np.ndarray], List[int], Optional[np.ndarray]]],
    scorer: ScoreFn,
    smoother: Smoother,
) -> Iterator[FrameResult]:
    """Score the crops of every pending frame in one call, then yield the frames in order (emptying ``pending``)."""
    crops = [crops for _, boxes, _, crops in pending if boxes is not None]
    probabilities = face_probabilities(scorer, np.concatenate(crops)) if crops else None
    start = 0
    for result, boxes, ids, _ in pending:
        if boxes is not None:
            result.faces = []
            for box, track, p in zip(boxes, ids, probabilities[start : start + len(boxes)]):
                p = smoother(track, result.time_s, p)
                result.faces.append(FacePrediction(tuple(int(v) for v in box), p, track))
            start += len(boxes)
    done = [result for result, *_ in pending]
    pending.clear()
    yield from done
