"""predict.py: faces found in photos, --no-detect equal to the evaluation path, failures reported and skipped."""

from __future__ import annotations

import csv
import errno
import json
import lzma
import os
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ferplus.checkpoint import load_model
from ferplus.data import EvalSet, read_folder
from ferplus.predict.faces import DETECT_MAX_SIDE, crop_faces, detect_faces
from ferplus.images import MAX_IMAGE_PIXELS
from ferplus.runtime import predict_scores
from ferplus.labels import EMOTIONS
from scripts import run_script

#: FER2013 test-split faces that are frontal and clear (found by the cascade at several scales).
CLEAR_FACES = ("fer0032227.png", "fer0032232.png", "fer0032258.png")
FER_SIDE = 48
UPSCALE = 4  # 48 → 192 pixels: photo-sized faces
MIN_IOU = 0.7
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def models(untrained_model) -> dict[str, Path]:
    """An untrained vgg13_tiny as a checkpoint and as its ONNX export."""
    return untrained_model


@pytest.fixture(scope="module")
def fer_faces(shared_ferplus) -> tuple[np.ndarray, list[list[str]]]:
    """The CLEAR_FACES pixels uint8 (3, 48, 48) and their fer2013new.csv rows."""
    with open(shared_ferplus / "fer2013new.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    index = {row[1]: i for i, row in enumerate(rows)}
    picked = [index[name] for name in CLEAR_FACES]
    pixels = np.load(lzma.open(shared_ferplus / "fer2013_pixels.npy.xz"))
    return pixels[picked], [rows[i] for i in picked]


@pytest.fixture(scope="module")
def photo() -> Path:
    """A portrait that is not from FER2013 (public domain, shipped with matplotlib)."""
    import matplotlib.cbook

    path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    if not path.is_file():
        pytest.skip("matplotlib's sample portrait is not installed")
    return path


def predict(argv: list[str]) -> int:
    return run_script("predict", *argv)


def iou(a, b) -> float:
    """Intersection over union of two (left, top, right, bottom) boxes."""
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_detector_finds_upscaled_fer_faces(fer_faces, models, tmp_path, capsys):
    faces, _ = fer_faces
    side = FER_SIDE * UPSCALE
    gap = side // 2
    canvas = np.full((side + 2 * gap, len(faces) * (side + gap) + gap), 128, dtype=np.uint8)
    placed = []
    for k, face in enumerate(faces):
        left = gap + k * (side + gap)
        canvas[gap:gap + side, left:left + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
        placed.append((left, gap, left + side, gap + side))

    boxes = detect_faces(canvas)
    assert len(boxes) == len(faces)
    for box, truth in zip(boxes, placed):
        assert iou(box, truth) > MIN_IOU

    path = tmp_path / "three_faces.png"
    cv2.imwrite(str(path), canvas)
    assert predict(["--model", str(models["onnx"]), "--json", str(path)]) == 0
    (result,) = json.loads(capsys.readouterr().out)["images"]
    assert result["error"] is None
    assert [[f["box"][k] for k in ("left", "top", "right", "bottom")] for f in result["faces"]] == boxes.tolist()
    for face in result["faces"]:
        assert sum(face["probabilities"].values()) == pytest.approx(1.0)
        assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)


@pytest.mark.parametrize("kind", ["checkpoint", "onnx"])
def test_no_detect_matches_evaluation_path(fer_faces, models, tmp_path, capsys, kind):
    faces, rows = fer_faces
    folder = tmp_path / "FER2013Test"
    folder.mkdir()
    # A prepared folder of the same images, read by the evaluation path (label.csv box = whole image).
    with open(folder / "label.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for face, row in zip(faces, rows):
            cv2.imwrite(str(folder / row[1]), face)
            writer.writerow([row[1], f"(0, 0, {FER_SIDE}, {FER_SIDE})", *row[2:]])
    eval_set = EvalSet(read_folder(folder), "cpu")
    assert eval_set.names == list(CLEAR_FACES)  # all kept by the majority rule, in file-name order
    model, _ = load_model(models["checkpoint"], "cpu")
    expected = torch.softmax(predict_scores(model, eval_set.inputs).double(), dim=1).numpy()

    assert predict(["--model", str(models[kind]), "--no-detect", "--json", str(folder)]) == 0
    images = json.loads(capsys.readouterr().out)["images"]
    assert [Path(r["path"]).name for r in images] == list(CLEAR_FACES)
    got = np.array([[r["faces"][0]["probabilities"][e] for e in EMOTIONS] for r in images])
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE)
    assert all(r["faces"][0]["box"] == {"left": 0, "top": 0, "right": FER_SIDE, "bottom": FER_SIDE} for r in images)


def test_failures_are_reported_and_the_run_goes_on(photo, models, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    shutil.copy(photo, inputs / "sub" / "portrait.jpg")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cv2.imwrite(str(inputs / "wall.png"), np.full((200, 300), 90, dtype=np.uint8))
    (inputs / "notes.txt").write_text("not an image, and not picked up from a folder")
    missing = tmp_path / "missing.png"
    annotated = tmp_path / "annotated"

    status = predict(["--model", str(models["checkpoint"]), str(inputs), str(missing), "--annotate", str(annotated)])
    captured = capsys.readouterr()
    assert status == 1  # some images failed, the others were still reported
    assert f"{inputs / 'broken.jpg'}: not a readable image" in captured.err
    assert f"{inputs / 'wall.png'}: no face found" in captured.err
    assert f"{missing}: no such file or folder" in captured.err
    assert "3 of 4 images gave no prediction" in captured.err
    assert "notes.txt" not in captured.out + captured.err
    assert f"{inputs / 'sub' / 'portrait.jpg'}: 1 face" in captured.out
    assert captured.out.count("face 1 at (left") == 1

    # Only the image with a face is annotated, under the folder argument's own name.
    (written,) = [p for p in annotated.rglob("*") if p.is_file()]
    assert written == annotated / "in" / "sub" / "portrait.jpg"
    drawn, original = cv2.imread(str(written)), cv2.imread(str(photo))
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # boxes and labels were drawn


def test_annotating_never_writes_over_an_input(photo, models, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    named = photos / "photo.jpg"
    shutil.copy(photo, named)
    original = named.read_bytes()
    elsewhere = tmp_path / "elsewhere.jpg"
    shutil.copy(photo, elsewhere)
    os.link(elsewhere, photos / "elsewhere.jpg")  # the same file as an input, by another name
    model = str(models["checkpoint"])

    # A photo named directly, annotated into its own folder; another whose name there is a hard link to it.
    assert predict(["--model", model, str(named), str(elsewhere), "--annotate", str(photos)]) == 0
    assert named.read_bytes() == original and elsewhere.read_bytes() == original
    # Nothing half-written beside them.
    assert sorted(p.name for p in photos.iterdir()) == ["elsewhere-2.jpg", "elsewhere.jpg", "photo-2.jpg", "photo.jpg"]
    for copy in ("photo-2.jpg", "elsewhere-2.jpg"):
        drawn = cv2.imread(str(photos / copy)).astype(int)
        assert np.abs(drawn - cv2.imread(str(photo)).astype(int)).max() > 100
    # A folder annotated into its parent: the copy's path would be the photo itself.
    album = tmp_path / "album"
    album.mkdir()
    shutil.copy(photo, album / "photo.jpg")
    assert predict(["--model", model, str(album), "--annotate", str(tmp_path)]) == 0
    assert (album / "photo.jpg").read_bytes() == original
    assert sorted(p.name for p in album.iterdir()) == ["photo-2.jpg", "photo.jpg"]

    assert predict(["--model", model, str(named), "--csv", str(named)]) == 2
    assert f"--csv {named}: is the input " in capsys.readouterr().err
    assert named.read_bytes() == original


def test_json_output_for_a_photo(photo, models, capsys):
    assert predict(["--model", str(models["onnx"]), "--json", str(photo)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["model"]["format"] == "onnx"
    (image,) = document["images"]
    (face,) = image["faces"]
    height, width = cv2.imread(str(photo)).shape[:2]
    box = face["box"]
    assert 0 <= box["left"] < box["right"] <= width and 0 <= box["top"] < box["bottom"] <= height
    assert list(face["probabilities"]) == list(EMOTIONS)


def test_empty_folder_and_bad_model(models, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert predict(["--model", str(models["onnx"]), str(tmp_path / "empty")]) == 1
    assert "empty: no images or videos in this folder" in capsys.readouterr().err
    assert predict(["--model", str(tmp_path / "nope.pt"), str(tmp_path / "empty")]) == 2
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err


def test_large_photo_is_searched_shrunk_and_boxes_are_in_its_own_pixels(photo):
    image = cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE)
    scale = DETECT_MAX_SIDE // max(image.shape) + 1
    large = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    (large_box,) = detect_faces(large)
    # The same search by hand: on a copy shrunk to DETECT_MAX_SIDE, its box scaled back up.
    shrink = DETECT_MAX_SIDE / max(large.shape)
    height, width = large.shape
    small = cv2.resize(large, (round(width * shrink), round(height * shrink)), interpolation=cv2.INTER_AREA)
    (small_box,) = detect_faces(small)
    assert max(large.shape) > DETECT_MAX_SIDE >= max(small.shape)
    np.testing.assert_array_equal(large_box, np.round(small_box / shrink))
    (box,) = detect_faces(image)  # and it is the photo's face, in the large photo's pixels
    assert iou(large_box, box * scale) > 0.8


def test_crops_are_mirrored_past_the_border():
    # Column c holds the value c, so a mirror about the left edge reads columns 23..0 then 0..23.
    gray = np.tile(np.arange(FER_SIDE, dtype=np.uint8), (FER_SIDE, 1))
    half = FER_SIDE // 2
    (crop,) = crop_faces(gray, np.array([[-half, 0, half, FER_SIDE]]), margin=0.0)
    assert crop.shape == (FER_SIDE, FER_SIDE)
    np.testing.assert_array_equal(crop[0], np.r_[np.arange(half)[::-1], np.arange(half)])


# --- inputs that must not hang, flood the terminal or take the machine's memory -------------------


def bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP's headers claiming ``width`` x ``height`` pixels, without the pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def test_huge_images_are_skipped_and_the_batch_goes_on(huge_png, models, tmp_path, capsys):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.random.default_rng(0).integers(0, 256, (FER_SIDE, FER_SIDE), dtype=np.uint8))
    # Formats whose size only Pillow reads for us: above our limit, and above Pillow's own too.
    large_bmp, huge_bmp = tmp_path / "large.bmp", tmp_path / "huge.bmp"
    large_bmp.write_bytes(bmp_header(12000, 12000))
    huge_bmp.write_bytes(bmp_header(20000, 20000))
    paths = [huge_png, large_bmp, huge_bmp, face]
    assert predict(["--model", str(models["checkpoint"]), "--no-detect", *map(str, paths)]) == 1
    captured = capsys.readouterr()
    limit = f"(the limit is {MAX_IMAGE_PIXELS:,} pixels)"
    assert captured.err.splitlines() == [
        f"warning: {huge_png}: too large to decode: 30000x30000 pixels {limit}",
        f"warning: {large_bmp}: too large to decode: 12000x12000 pixels {limit}",
        f"warning: {huge_bmp}: too large to decode {limit}",
        "predict.py: error: 3 of 4 images gave no prediction (see the warnings above)",
    ]
    assert captured.out.startswith(f"{face}: 1 face")


def test_damaged_image_and_fifo_are_one_warning_each(models, tmp_path, make_fifo, capfd):
    image = np.random.default_rng(1).integers(0, 256, (FER_SIDE, FER_SIDE), dtype=np.uint8)
    png = bytearray(cv2.imencode(".png", image)[1].tobytes())
    png[-20] ^= 0xFF  # inside the compressed pixels: libpng prints a complaint of its own
    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(bytes(png))
    fifo = make_fifo(tmp_path / "pipe.png")
    assert predict(["--model", str(models["checkpoint"]), "--no-detect", str(damaged), str(fifo)]) == 1
    captured = capfd.readouterr()  # what reached the process's stderr, from Python or native code
    assert captured.err.splitlines() == [
        f"warning: {damaged}: not a readable image",
        f"warning: {fifo}: not a regular file",
        "predict.py: error: 2 of 2 images gave no prediction (see the warnings above)",
    ]


def test_full_disk_while_annotating_names_the_file(models, tmp_path, monkeypatch, capsys):
    face = tmp_path / "face.png"
    cv2.imwrite(str(face), np.full((FER_SIDE, FER_SIDE), 128, dtype=np.uint8))
    annotated = tmp_path / "annotated"
    real_write = Path.write_bytes

    def full_disk(path, data):
        if path.parent == annotated:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    assert predict(["--model", str(models["checkpoint"]), "--no-detect", "--annotate", str(annotated), str(face)]) == 1
    message = f"predict.py: error: {annotated / 'face.png'}: {os.strerror(errno.ENOSPC)}"
    assert capsys.readouterr().err.splitlines() == [message]
    assert list(annotated.iterdir()) == []
