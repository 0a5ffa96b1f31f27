"""The work behind ``predict.py``: photos, videos and cameras scored, and every output written.

Each source is reported as it is done; one that cannot be used (missing, unreadable, truncated,
without a face) gets one line on stderr and the others go on. Output files never replace an
input (:class:`~ferplus.fileio.InputGuard`) and appear whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple, Union

import cv2
import numpy as np
import torch

from ..errors import FerplusError
from ..fileio import InputGuard
from ..metrics import PERCENT
from ..scorers import load_scorer
from .boxes import GivenBoxes
from .drawing import annotate, write_timeline
from .faces import read_image
from .outputs import CsvOutput, FacePrediction, TrackSummary, csv_rows, staged_output
from .photos import IMAGE_SUFFIXES, ImageResult, annotated_name, format_result, predict_image, write_image
from .video import (
    BATCH_FRAMES, DETECT_EVERY, DETECT_SIDE, VIDEO_SUFFIXES, FaceFinder, FrameResult, Sampler, VideoError,
    VideoSource, predict_video,
)

PathLike = Union[str, os.PathLike]

#: Annotated videos are MPEG-4 (part 2), which every OpenCV build with FFmpeg writes.
VIDEO_OUT_SUFFIX = ".mp4"
VIDEO_OUT_FOURCC = "mp4v"
TIMELINE_SUFFIX = ".timeline.png"
WINDOW_KEY_WAIT_MS = 1
QUIT_KEY = ord("q")


@dataclass
class PredictOptions:
    """How ``predict.py`` scores and what it writes (the defaults: detect, text on stdout, nothing written)."""

    detect: bool = True
    boxes_file: Optional[PathLike] = None
    as_json: bool = False
    csv_path: Optional[PathLike] = None
    annotate_dir: Optional[PathLike] = None
    timeline_dir: Optional[PathLike] = None
    every: int = 1
    fps: Optional[float] = None
    smooth_s: float = 0.0
    detect_every: int = DETECT_EVERY
    detect_side: int = DETECT_SIDE
    #: Show a camera's frames in a window (where OpenCV can open one) instead of printing them.
    window: bool = False


@dataclass
class Source:
    """A path to predict on: ``kind`` is ``image`` or ``video`` by its suffix, or ``either`` (a file
    named directly with another suffix: tried as a photo, then as a video)."""

    path: Path
    kind: str
    output_name: Path
    error: Optional[str] = None


@dataclass
class VideoResult:
    """What one video or camera gave: the frames read and scored, each track's summary, or an error."""

    name: str
    error: Optional[str] = None
    fps: float = 0.0
    width: int = 0
    height: int = 0
    frames_read: int = 0
    frames_scored: int = 0
    tracks: Dict[int, TrackSummary] = field(default_factory=dict)
    #: Per scored frame, JSON-ready (only kept for ``--json``).
    frames: List[Dict[str, Any]] = field(default_factory=list)
    #: Per track, its times and probabilities (only kept for the timeline).
    series: Dict[int, Tuple[List[float], List[np.ndarray]]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form."""
        return {
            "path": self.name, "error": self.error, "fps": self.fps, "width": self.width, "height": self.height,
            "frames_read": self.frames_read, "frames_scored": self.frames_scored,
            "tracks": [t.to_dict() for t in self.tracks.values()], "frames": self.frames,
        }

    def describe(self) -> str:
        """Readable lines: what was read, and a line per track."""
        count = len(self.tracks)
        lines = [
            f"{self.name}: {self.frames_read} frames, {self.frames_scored} scored, "
            f"{count} track{'s' if count != 1 else ''}"
        ]
        return "\n".join(lines + [t.describe() for t in self.tracks.values()])


def find_sources(paths: Sequence[PathLike]) -> List[Source]:
    """Expand files and folders (recursively, photo and video suffixes only, sorted) into sources.

    A path that does not exist or is not a regular file, or a folder without photos or videos,
    becomes a source carrying an error.
    """
    wanted = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    found: List[Source] = []
    for arg in map(Path, paths):
        if arg.is_dir():
            files = sorted(p for p in arg.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
            if not files:
                found.append(Source(arg, "image", arg, error=f"{arg}: no images or videos in this folder"))
            # Keep the folder's own name and layout, so same-named files in subfolders stay apart.
            found += [Source(p, _kind(p), Path(arg.resolve().name) / p.relative_to(arg)) for p in files]
        elif arg.is_file():
            found.append(Source(arg, _kind(arg), Path(arg.name)))
        elif arg.exists():  # a FIFO or a device: reading it could wait forever
            found.append(Source(arg, "image", arg, error=f"{arg}: not a regular file"))
        else:
            found.append(Source(arg, "image", arg, error=f"{arg}: no such file or folder"))
    return found


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "either"


@dataclass
class Report:
    """Every result of a ``predict.py`` run; failed ones carry ``error``."""

    images: List[ImageResult] = field(default_factory=list)
    videos: List[VideoResult] = field(default_factory=list)

    @property
    def failed(self) -> int:
        """How many sources gave no prediction."""
        return sum(r.error is not None for r in [*self.images, *self.videos])


def predict_sources(
    model_path: PathLike,
    paths: Sequence[PathLike],
    options: Optional[PredictOptions] = None,
    camera: Optional[int] = None,
    device: Union[str, torch.device] = "cpu",
    out: Optional[TextIO] = None,
    err: Optional[TextIO] = None,
) -> Report:
    """Predict emotions for every photo and video in ``paths`` (files or folders), then ``camera``.

    Readable results go to ``out`` (one JSON document at the end with ``as_json``), problems to
    ``err`` as one line each. A camera runs until Ctrl-C, ``q`` in its window, or its end.
    """
    options = options or PredictOptions()
    sources = find_sources(paths)
    guard = InputGuard(s.path for s in sources)
    if options.boxes_file is not None:
        guard.add(options.boxes_file)
    if options.csv_path is not None:
        guard.refuse(options.csv_path, "--csv")
    Sampler(options.every, options.fps)  # bad sampling flags fail before the model is loaded
    boxes = GivenBoxes(options.boxes_file) if options.boxes_file is not None else None
    scorer, info = load_scorer(model_path, device)
    run = _Run(scorer, options, boxes, guard, out or sys.stdout, err or sys.stderr)
    with contextlib.ExitStack() as stack:
        run.csv = CsvOutput(stack, options.csv_path) if options.csv_path is not None else None
        for source in sources:
            run.source(source)
        if camera is not None:
            run.video(camera, Path(f"camera-{camera}"))
    if options.as_json:
        document = {"model": info, "images": [r.to_dict() for r in run.report.images]}
        document["videos"] = [r.to_dict() for r in run.report.videos]
        json.dump(document, run.out, indent=2)
        run.out.write("\n")
    return run.report


class _Run:
    """One ``predict.py`` run's state: the scorer, the outputs, and the names already written."""

    def __init__(
        self, scorer, options: PredictOptions, boxes: Optional[GivenBoxes], guard: InputGuard, out: TextIO, err: TextIO
    ) -> None:
        self.scorer, self.options, self.boxes, self.guard = scorer, options, boxes, guard
        self.out, self.err = out, err
        self.csv: Optional[CsvOutput] = None
        self.report = Report()
        self._written: set = set()

    def _target(self, folder: PathLike, name: Path) -> Path:
        """A fresh path under ``folder``: never an input, never one written earlier in this run."""
        target = self.guard.fresh_path(Path(folder) / name, self._written)
        self._written.add(target)
        return target

    def _given_boxes(self, path: Path) -> Tuple[Optional[Dict[int, np.ndarray]], Optional[str]]:
        """``--boxes``' frames of ``path`` (None without ``--boxes``), or why there are none."""
        if self.boxes is None:
            return None, None
        given = self.boxes.for_source(path)
        return given, None if given is not None else f"{path}: no boxes for it in --boxes {self.boxes.path}"

    def source(self, source: Source) -> None:
        """Predict on one source found on the command line and report it."""
        if source.error is not None or source.kind == "image":
            self.photo(source)
            return
        if source.kind == "either":  # a photo by another name, or a video OpenCV opens
            try:
                image = read_image(source.path)
            except FerplusError as e:
                source.error = str(e)
            else:
                self.photo(source, image)
                return
        try:
            video = VideoSource(source.path)
        except VideoError as e:
            if source.kind == "video":
                self._video_done(VideoResult(str(source.path), error=str(e)))
            else:
                self.photo(source)  # reported as the photo it could not be read as
            return
        self.video(video, source.output_name)

    def photo(self, source: Source, image: Optional[np.ndarray] = None) -> None:
        """Predict on one photo (``image``, if already read), write its outputs and report it."""
        result = ImageResult(source.path, output_name=source.output_name, error=source.error)
        given, result.error = self._given_boxes(source.path) if result.error is None else (None, result.error)
        if result.error is None:
            try:
                image = read_image(result.path) if image is None else image
            except FerplusError as e:
                result.error = str(e)
            else:
                boxes = None if given is None else given.get(0, np.zeros((0, 4), dtype=np.int64))
                result.faces = predict_image(image, self.scorer, self.options.detect, boxes)
                if not result.faces:
                    hint = "no boxes given" if given is not None else "no face found (use --no-detect if the image is a face crop)"
                    result.error = f"{result.path}: {hint}"
                elif self.options.annotate_dir is not None:
                    target = self._target(self.options.annotate_dir, annotated_name(result.output_name))
                    write_image(target, annotate(image, result.faces))
        self.report.images.append(result)
        if result.error is not None:
            print(f"warning: {result.error}", file=self.err)
            return
        if self.csv is not None:
            self.csv.write(csv_rows(result.path, result.faces))
        if not self.options.as_json:
            print(format_result(result), file=self.out)

    def video(self, source: Union[VideoSource, int], output_name: Path) -> None:
        """Predict on a video (open) or a camera (by number), write its outputs and report it."""
        camera = isinstance(source, int)
        try:
            video = VideoSource(source) if camera else source
        except VideoError as e:
            self._video_done(VideoResult(f"camera {source}", error=str(e)))
            return
        result = VideoResult(video.name, fps=video.fps, width=video.width, height=video.height)
        given, result.error = (None, None) if camera else self._given_boxes(Path(video.name))
        if result.error is not None:
            video.close()
            self._video_done(result)
            return
        options = self.options
        window = _Window.open(video.name, self.err) if camera and options.window else None
        with contextlib.ExitStack() as stack:
            stack.callback(video.close)
            writer = self._video_writer(stack, video, output_name) if options.annotate_dir is not None else None
            finder = FaceFinder(options.detect, given, options.detect_every, options.detect_side)
            frames = predict_video(
                video, self.scorer, finder, Sampler(options.every, options.fps), options.smooth_s,
                batch_frames=1 if camera else BATCH_FRAMES, all_frames=writer is not None or window is not None,
            )
            last: List[FacePrediction] = []
            try:
                for frame in frames:
                    if frame.faces is not None:
                        last = frame.faces
                        self._record(result, frame)
                    if frame.image is not None and (writer is not None or window is not None):
                        drawn = annotate(frame.image, last)
                        if writer is not None:
                            writer.write(drawn)
                        if window is not None and not window.show(drawn):
                            break
                    if camera and window is None and frame.faces is not None:
                        print(_frame_line(video.name, frame), file=self.out, flush=True)
            except VideoError as e:
                result.error = str(e)
            except KeyboardInterrupt:
                if not camera:
                    raise
            finally:
                frames.close()
                result.frames_read = video.frames_read
                if window is not None:
                    window.close()
        if result.error is None and not result.tracks:
            result.error = f"{video.name}: no face found in {result.frames_scored} scored frames"
        if options.timeline_dir is not None and result.frames_scored:
            target = self._target(options.timeline_dir, output_name.with_name(output_name.stem + TIMELINE_SUFFIX))
            write_timeline(target, video.name, result.series)
        self._video_done(result)

    def _video_writer(self, stack: contextlib.ExitStack, video: VideoSource, output_name: Path) -> cv2.VideoWriter:
        """An MPEG-4 writer of ``video``'s size and rate into a staged file under ``--annotate``."""
        target = self._target(self.options.annotate_dir, output_name.with_suffix(VIDEO_OUT_SUFFIX))
        tmp = stack.enter_context(staged_output(target))
        fourcc = cv2.VideoWriter_fourcc(*VIDEO_OUT_FOURCC)
        writer = cv2.VideoWriter(str(tmp), fourcc, video.fps, (video.width, video.height))
        if not writer.isOpened():
            raise FerplusError(f"{target}: OpenCV cannot write an MPEG-4 ({VIDEO_OUT_FOURCC}) video here")
        stack.callback(writer.release)  # before the staged file is renamed into place
        return writer

    def _record(self, result: VideoResult, frame: FrameResult) -> None:
        """Add one scored frame to the summaries, the CSV, the JSON and the timeline."""
        result.frames_scored += 1
        for face in frame.faces:
            summary = result.tracks.setdefault(face.track, TrackSummary(face.track, frame.time_s))
            summary.add(frame.time_s, face)
            if self.options.timeline_dir is not None:
                times, probabilities = result.series.setdefault(face.track, ([], []))
                times.append(frame.time_s)
                probabilities.append(face.probabilities)
        if self.csv is not None:
            self.csv.write(csv_rows(result.name, frame.faces, frame.index, frame.time_s))
        if self.options.as_json:
            faces = [f.to_dict() for f in frame.faces]
            result.frames.append({"frame": frame.index, "time_s": frame.time_s, "faces": faces})

    def _video_done(self, result: VideoResult) -> None:
        self.report.videos.append(result)
        if result.error is not None:
            print(f"warning: {result.error}", file=self.err)
        if result.frames_read and not self.options.as_json:
            print(result.describe(), file=self.out)


def _frame_line(name: str, frame: FrameResult) -> str:
    """A camera frame as one printed line: each face's track and top emotion."""
    faces = "  ".join(f"#{f.track} {f.emotion} {PERCENT * f.probabilities.max():.0f}%" for f in frame.faces) or "no face"
    return f"{name} frame {frame.index} at {frame.time_s:.2f} s: {faces}"


class _Window:
    """A camera's annotated frames on screen; ``q`` closes it."""

    def __init__(self, title: str) -> None:
        """Open the window; ``cv2.error`` where OpenCV has no GUI (the headless build) or no display."""
        self.title = title
        cv2.namedWindow(title)

    @classmethod
    def open(cls, title: str, err: TextIO) -> Optional["_Window"]:
        """The window, or None (said once on ``err``) where none can be opened: frames are printed then."""
        try:
            return cls(title)
        except cv2.error:
            print(f"{title}: OpenCV cannot open a window here; printing the frames instead", file=err)
            return None

    def show(self, image: np.ndarray) -> bool:
        """Show one frame; False once the user pressed ``q``."""
        cv2.imshow(self.title, image)
        return cv2.waitKey(WINDOW_KEY_WAIT_MS) & 0xFF != QUIT_KEY

    def close(self) -> None:
        """Close the window."""
        with contextlib.suppress(cv2.error):
            cv2.destroyWindow(self.title)
