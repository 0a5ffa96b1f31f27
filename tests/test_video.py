"""predict.py on videos: tracked faces, per-frame outputs, sampling, given boxes, bad input, batched scoring."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ferplus.fer_format import EMOTIONS
from ferplus.predict.drawing import _broken_at_gaps
from ferplus.predict.outputs import CSV_COLUMNS
from ferplus.predict.photos import predict_image
from ferplus.predict.tracking import MAX_MISSED, Tracker
from ferplus.predict.video import FaceFinder, Sampler, predict_video
from ferplus.scorers import load_scorer
from scripts import ROOT, run_script
from test_predict import models, photo  # noqa: F401 (fixtures)

WIDTH, HEIGHT, FPS, FRAMES = 160, 120, 10, 30
GAP = range(12, 15)  # frames without the face: a detection gap the track must survive
FACE_SIZE = (80, 94)  # the portrait shrunk so that its face is about 36 pixels wide
STEP = 2  # pixels the face moves right per frame
FACE_FRAMES = FRAMES - len(GAP)


def write_clip(path: Path, portrait: Path, gap=GAP, frames: int = FRAMES, fourcc: str = "mp4v") -> Path:
    """A small clip: the portrait moving right on grey, missing during ``gap``."""
    face = cv2.resize(cv2.imread(str(portrait)), FACE_SIZE, interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((HEIGHT, WIDTH, 3), 120, dtype=np.uint8)
        if i not in gap:
            x = 10 + STEP * i
            frame[13 : 13 + FACE_SIZE[1], x : x + FACE_SIZE[0]] = face
        writer.write(frame)
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(photo, tmp_path_factory) -> Path:  # noqa: F811
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", photo)


def predict(*argv) -> int:
    return run_script("predict", *argv)


def test_one_track_through_motion_and_a_gap(clip, models):  # noqa: F811
    scorer, _ = load_scorer(models["checkpoint"])
    results = list(predict_video(clip, scorer))
    assert [r.index for r in results] == list(range(FRAMES))
    assert [r.time_s for r in results] == pytest.approx([i / FPS for i in range(FRAMES)])
    for r in results:
        assert len(r.faces) == (0 if r.index in GAP else 1)
    faces = [r.faces[0] for r in results if r.faces]
    assert {f.track for f in faces} == {1}  # the same id before and after the gap
    lefts = [f.box[0] for f in faces]
    assert lefts[-1] - lefts[0] > STEP * FRAMES // 2  # the face did move, and was followed


def test_tracker_keeps_ids_apart_and_ends_lost_tracks():
    tracker = Tracker()
    a, b = np.array([0, 0, 40, 40]), np.array([100, 0, 140, 40])
    assert tracker.update(np.array([a, b])) == [1, 2]
    assert tracker.update(np.array([b + 5, a + 5])) == [2, 1]  # matched by overlap, not by order
    for _ in range(MAX_MISSED):
        assert tracker.update(np.array([b])) == [2]
    assert tracker.update(np.array([a, b])) == [1, 2]  # face 1 survived MAX_MISSED frames unseen
    for _ in range(MAX_MISSED + 1):
        assert tracker.update(np.array([b])) == [2]
    assert tracker.update(np.array([a, b])) == [3, 2]  # one frame more, and it is a new track


def test_batched_video_scores_equal_per_frame_photo_scores(clip, models):  # noqa: F811
    # With a full search in every frame, the batched, tracked path does the plain loop's work:
    # its boxes and probabilities are those of each frame scored alone as a photo.
    scorer, _ = load_scorer(models["onnx"])
    finder = FaceFinder(detect_every=1, detect_side=max(WIDTH, HEIGHT))
    batched = list(predict_video(clip, scorer, finder, batch_frames=8))
    capture = cv2.VideoCapture(str(clip))
    for result in batched:
        ok, frame = capture.read()
        assert ok
        alone = predict_image(frame, scorer)
        assert [f.box for f in result.faces] == [f.box for f in alone]
        for got, want in zip(result.faces, alone):
            np.testing.assert_allclose(got.probabilities, want.probabilities, rtol=0, atol=1e-6)


def test_csv_has_a_row_per_face_per_frame(clip, photo, models, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "faces.csv"
    assert predict("--model", models["checkpoint"], clip, photo, "--csv", out) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    video_rows = [r for r in rows if r["source"] == str(clip)]
    assert len(video_rows) == FACE_FRAMES  # one face in each frame outside the gap
    assert [int(r["frame"]) for r in video_rows] == [i for i in range(FRAMES) if i not in GAP]
    assert {r["track"] for r in video_rows} == {"1"}
    for r in video_rows:
        probabilities = [float(r[e]) for e in EMOTIONS]
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
        assert r["emotion"] == EMOTIONS[int(np.argmax(probabilities))]
        assert float(r["time_s"]) == pytest.approx(int(r["frame"]) / FPS)
        assert int(r["w"]) > 0 and int(r["h"]) > 0
    (photo_row,) = [r for r in rows if r["source"] == str(photo)]
    assert photo_row["frame"] == photo_row["time_s"] == photo_row["track"] == ""
    captured = capsys.readouterr().out
    assert f"{clip}: {FRAMES} frames, {FRAMES} scored, 1 track" in captured
    assert "  track 1: 0.00-2.90 s (27 frames), mostly" in captured


def test_annotated_video_timeline_and_json_summary(clip, models, tmp_path, capsys):  # noqa: F811
    annotated, timeline = tmp_path / "annotated", tmp_path / "timeline"
    argv = ["--model", models["onnx"], clip, "--annotate", annotated, "--timeline", timeline, "--json"]
    assert predict(*argv, "--smooth", "0.5") == 0
    (video,) = json.loads(capsys.readouterr().out)["videos"]
    written = cv2.VideoCapture(str(annotated / "clip.mp4"))
    assert written.get(cv2.CAP_PROP_FRAME_COUNT) == FRAMES
    assert written.get(cv2.CAP_PROP_FPS) == FPS
    assert (written.get(cv2.CAP_PROP_FRAME_WIDTH), written.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (WIDTH, HEIGHT)
    original = cv2.VideoCapture(str(clip))
    differs = []
    for _ in range(FRAMES):
        (_, drawn), (_, plain) = written.read(), original.read()
        differs.append(np.abs(drawn.astype(int) - plain.astype(int)).max() > 100)
    assert all(differs[i] for i in range(FRAMES) if i < GAP[0])  # boxes and labels drawn on the face frames
    picture = cv2.imread(str(timeline / "clip.timeline.png"))
    assert picture is not None and picture.shape[1] > 500
    assert sorted(p.name for p in annotated.iterdir()) == ["clip.mp4"]  # no temporary file left beside it

    (track,) = video["tracks"]
    assert track["track"] == 1 and track["frames"] == FACE_FRAMES
    assert track["duration_s"] == pytest.approx((FRAMES - 1) / FPS)
    assert sum(track["share"].values()) == pytest.approx(1.0)
    assert track["dominant"] == max(track["share"], key=track["share"].get)
    assert len(video["frames"]) == FRAMES and video["frames"][GAP[0]]["faces"] == []
    # Smoothed over half a second: later frames average several raw ones, so they change less.
    faces = [f["faces"][0]["probabilities"] for f in video["frames"] if f["faces"]]
    assert all(sum(p.values()) == pytest.approx(1.0) for p in faces)


def test_timeline_lines_break_where_a_track_was_unseen():
    probabilities = [np.full(len(EMOTIONS), 1 / len(EMOTIONS))] * 5
    times, values = _broken_at_gaps([0.0, 0.1, 0.2, 0.6, 0.7], probabilities)
    np.testing.assert_array_equal(np.isnan(times), [False, False, False, True, False, False])
    assert np.isnan(values[3]).all() and not np.isnan(np.delete(values, 3, axis=0)).any()


def test_smoothing_averages_a_tracks_recent_frames(clip, models):  # noqa: F811
    scorer, _ = load_scorer(models["checkpoint"])
    raw = [r for r in predict_video(clip, scorer) if r.faces]
    smooth = [r for r in predict_video(clip, scorer, smooth_s=0.25) if r.faces]
    for k, result in enumerate(smooth):
        window = [r.faces[0].probabilities for r in raw[: k + 1] if r.time_s > result.time_s - 0.25]
        np.testing.assert_allclose(result.faces[0].probabilities, np.mean(window, axis=0), atol=1e-12)
    assert not np.allclose(raw[5].faces[0].probabilities, smooth[5].faces[0].probabilities)


@pytest.mark.parametrize("flags, scored", [(["--every", "3"], range(0, FRAMES, 3)), (["--fps", "5"], range(0, FRAMES, 2))])
def test_every_and_fps_sample_frames(clip, models, capsys, flags, scored):  # noqa: F811
    assert predict("--model", models["checkpoint"], clip, "--json", *flags) == 0
    (video,) = json.loads(capsys.readouterr().out)["videos"]
    assert [f["frame"] for f in video["frames"]] == list(scored)
    assert video["frames_read"] == FRAMES and video["frames_scored"] == len(scored)


def test_sampler_refuses_bad_rates():
    for every, fps in [(0, None), (1, 0.0), (1, float("nan"))]:
        with pytest.raises(Exception, match="--every|--fps"):
            Sampler(every, fps)


def test_given_boxes_are_scored_instead_of_detected(clip, photo, models, tmp_path, capsys):  # noqa: F811
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(
        "source,frame,x,y,w,h\n"
        f"{clip},0,10,10,50,50\n{clip},0,90,20,40,40\n{clip},4,12,10,50,50\n{photo},,100,80,200,220\n"
    )
    assert predict("--model", models["checkpoint"], clip, photo, "--boxes", boxes, "--json", "--every", "2") == 0
    document = json.loads(capsys.readouterr().out)
    (video,) = document["videos"]
    got = {f["frame"]: [(b["box"]["left"], b["box"]["top"], b["box"]["right"], b["box"]["bottom"]) for b in f["faces"]]
           for f in video["frames"]}
    assert got[0] == [(10, 10, 60, 60), (90, 20, 130, 60)] and got[4] == [(12, 10, 62, 60)]
    assert all(not faces for frame, faces in got.items() if frame not in (0, 4))
    assert [b["track"] for b in video["frames"][0]["faces"] + video["frames"][2]["faces"]] == [1, 2, 1]
    (image,) = document["images"]
    assert [image["faces"][0]["box"][k] for k in ("left", "top", "right", "bottom")] == [100, 80, 300, 300]

    as_json = tmp_path / "boxes.json"
    as_json.write_text(json.dumps([{"source": str(photo), "box": [100, 80, 200, 220]}]))
    assert predict("--model", models["checkpoint"], photo, "--boxes", as_json, "--json") == 0
    assert json.loads(capsys.readouterr().out)["images"] == document["images"]


@pytest.mark.parametrize("text, problem", [
    ("source,x,y\nclip.mp4,1,2\n", "header: needs the columns source, x, y, w, h (missing w, h)"),
    ("source,frame,x,y,w,h\nclip.mp4,-1,0,0,9,9\n", "line 2: frame '-1' is not a frame number"),
    ("source,x,y,w,h\nclip.mp4,0,0,0,9\n", "line 2: box ['0', '0', '0', '9'] is not x, y, w, h"),
    ('[{"source": "a.png"}]', "entry 0: expected {source, frame, box: [x, y, w, h]}"),
])
def test_bad_boxes_file_is_one_line(models, photo, tmp_path, capsys, text, problem):  # noqa: F811
    boxes = tmp_path / "boxes.csv"
    boxes.write_text(text)
    assert predict("--model", models["checkpoint"], photo, "--boxes", boxes) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"predict.py: error: --boxes {boxes}: {problem}")


def test_bad_videos_are_one_line_each_and_the_others_go_on(clip, photo, models, tmp_path, capfd):  # noqa: F811
    avi = write_clip(tmp_path / "whole.avi", photo, fourcc="MJPG")
    data = avi.read_bytes()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[: len(data) // 2])
    unknown_codec = tmp_path / "codec.avi"
    unknown_codec.write_bytes(data.replace(b"MJPG", b"QQQQ"))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    empty = write_clip(tmp_path / "empty.mp4", photo, gap=range(FRAMES), frames=5)
    argv = ["--model", models["checkpoint"], truncated, unknown_codec, garbage, empty, clip, "--camera", "99"]
    assert predict(*argv) == 1
    captured = capfd.readouterr()
    errors = captured.err.splitlines()
    assert errors[0].startswith(f"warning: {truncated}: ended after ") and " of 30 frames (truncated or damaged" in errors[0]
    assert errors[1].startswith(f"warning: {unknown_codec}: cannot be opened as a video (OpenCV: ")
    assert "codec" in errors[1]  # what OpenCV reported: it found no decoder for the codec
    assert errors[2].startswith(f"warning: {garbage}: cannot be opened as a video (OpenCV: ")
    assert errors[3] == f"warning: {empty}: no face found in 5 scored frames"
    assert errors[4].startswith("warning: camera 99: cannot be opened (OpenCV: ")
    assert errors[5:] == ["predict.py: error: 5 of 6 videos gave no prediction (see the warnings above)"]
    assert f"{clip}: {FRAMES} frames, {FRAMES} scored, 1 track" in captured.out
    assert f"{truncated}: " in captured.out  # the frames it did have are still reported


def test_command_line_needs_a_source(models, capsys):  # noqa: F811
    assert predict("--model", models["checkpoint"]) == 2
    assert "give photos, videos or folders to read, or --camera N" in capsys.readouterr().err


def test_prediction_imports_no_training_code():
    training = ["engine", "step", "data", "datasets", "multirun", "distributed", "prepare", "synthetic", "reproduce"]
    code = (
        "import sys, ferplus.predict.run, ferplus.cli.predict\n"
        f"print([m for m in {training!r} if 'ferplus.' + m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert out.stdout.strip() == "[]"


def test_files_by_any_name_are_tried_as_photo_then_video(clip, photo, models, tmp_path, capsys):  # noqa: F811
    video, picture = tmp_path / "recording.bin", tmp_path / "portrait.dat"
    video.write_bytes(clip.read_bytes())
    picture.write_bytes(photo.read_bytes())
    assert predict("--model", models["checkpoint"], video, picture, "--every", "10", "--json") == 0
    document = json.loads(capsys.readouterr().out)
    assert [v["path"] for v in document["videos"]] == [str(video)]
    assert [f["frame"] for f in document["videos"][0]["frames"]] == [0, 10, 20]
    assert [i["path"] for i in document["images"]] == [str(picture)] and document["images"][0]["faces"]


class _CameraStub:
    """A capture (of the test clip, say) whose user presses Ctrl-C after ``frames`` frames."""

    def __init__(self, capture: cv2.VideoCapture, frames: int) -> None:
        self._capture, self._left = capture, frames

    def grab(self) -> bool:
        if not self._left:
            raise KeyboardInterrupt
        self._left -= 1
        return self._capture.grab()

    def __getattr__(self, name):
        return getattr(self._capture, name)


def test_camera_prints_frames_and_ctrl_c_ends_the_run_whole(clip, models, tmp_path, monkeypatch, capsys):  # noqa: F811
    real = cv2.VideoCapture
    camera = lambda source: _CameraStub(real(str(clip)), 8) if isinstance(source, int) else real(source)  # noqa: E731
    monkeypatch.setattr(cv2, "VideoCapture", camera)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    table = tmp_path / "camera.csv"
    assert predict("--model", models["checkpoint"], "--camera", "0", "--csv", table, "--annotate", tmp_path / "out") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" at ")[0] for line in lines[:8]] == [f"camera 0 frame {i}" for i in range(8)]
    assert re.fullmatch(r"camera 0 frame 0 at \d+\.\d\d s: #1 [a-z]+ \d+%", lines[0])
    assert lines[8] == "camera 0: 8 frames, 8 scored, 1 track"
    with open(table, newline="") as f:
        assert [r["source"] for r in csv.DictReader(f)] == ["camera 0"] * 8
    assert cv2.VideoCapture(str(tmp_path / "out" / "camera-0.mp4")).get(cv2.CAP_PROP_FRAME_COUNT) == 8


def test_a_video_run_interrupted_leaves_nothing_half_written(clip, models, tmp_path, monkeypatch, capsys):  # noqa: F811
    real = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda source: _CameraStub(real(source), 20))  # Ctrl-C at frame 20
    table, annotated = tmp_path / "faces.csv", tmp_path / "annotated"
    assert predict("--model", models["checkpoint"], clip, "--csv", table, "--annotate", annotated) == 130
    assert "predict.py: interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["annotated"]  # no CSV, no video, no temporary file
