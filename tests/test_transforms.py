"""Crops, augmentation and normalisation against a per-image float64 transcription of the formulas."""

from __future__ import annotations

import csv
import lzma
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ferplus import transforms
from ferplus.transforms import (
    MAX_ANGLE_DEG,
    MAX_SCALE,
    MAX_SHIFT,
    MAX_SKEW,
    OUTPUT_SIZE,
    AugmentParams,
    crop,
    identity_params,
    normalize,
    preprocess,
    sample_augment_params,
)

MAX_MEAN_ABS_DIFF = 1e-3  # the acceptance bound against the reference formulas
NUM_REAL_IMAGES = 64


# ---------------------------------------------------------------- the reference, one image at a time
def reference_crop(image: np.ndarray, box, p: dict) -> np.ndarray:
    """The issue's crop formula, literally: (r, c) samples the input at (r, c) @ M + offset."""
    left, top, right, bottom = box
    h, w = bottom - top, right - left
    a = math.radians(p["angle"])
    rotation = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    m = (
        rotation
        @ np.array([[1, p["skew_y"]], [0, 1]])
        @ np.array([[1, 0], [p["skew_x"], 1]])
        @ np.diag([p["scale_y"] * (h - 1) / 63, p["scale_x"] * (w - 1) / 63])
    )
    centre_in = np.array([(top + bottom) / 2, (left + right) / 2])
    centre_out = np.array([32 + p["shift_y"], 32 + p["shift_x"]])
    offset = centre_in - centre_out @ m
    rows, cols = np.mgrid[:64, :64]
    coords = np.stack([rows.ravel(), cols.ravel()], 1) @ m + offset  # (4096, 2): (y, x) per output pixel
    out = bilinear_mirrored(image, coords[:, 0], coords[:, 1]).reshape(64, 64)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out[:, ::-1] if p["flip"] else out


def mirror(i: np.ndarray, n: int) -> np.ndarray:
    """Half-sample symmetric extension: pixel -1 is pixel 0, pixel n is pixel n-1."""
    i = i % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def bilinear_mirrored(image: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    n_rows, n_cols = image.shape
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    value = np.zeros(len(y))
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            value += wy * wx * image[mirror(y0 + dy, n_rows), mirror(x0 + dx, n_cols)]
    return value


def reference_normalize(crop_uint8: np.ndarray) -> np.ndarray:
    """Histogram equalisation into [-1, 1], least-squares plane removal, RMS division."""
    hist = np.bincount(crop_uint8.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    x = cdf[crop_uint8] * 2.0 / cdf[255] - 1
    rows, cols = np.mgrid[:64, :64]
    design = np.stack([np.ones(64 * 64), cols.ravel(), rows.ravel()], 1)
    coef, *_ = np.linalg.lstsq(design, x.ravel(), rcond=None)
    x = x - (design @ coef).reshape(64, 64)
    rms = np.sqrt(np.mean(x**2))
    return x / rms if rms >= 1e-6 else x


IDENTITY = dict(shift_y=0, shift_x=0, angle=0, skew_y=0, skew_x=0, scale_y=1, scale_x=1, flip=False)


def params_to_dicts(params: AugmentParams) -> list[dict]:
    values = {k: getattr(params, k).cpu().tolist() for k in IDENTITY}
    return [{k: values[k][i] for k in IDENTITY} for i in range(len(params))]


def params_from_dicts(dicts: list[dict]) -> AugmentParams:
    columns = {k: torch.tensor([d[k] for d in dicts], dtype=torch.float64) for k in IDENTITY if k != "flip"}
    return AugmentParams(**columns, flip=torch.tensor([d["flip"] for d in dicts]))


# ---------------------------------------------------------------- data
@pytest.fixture(scope="module")
def real_test_images(shared_ferplus: Path) -> np.ndarray:
    """The first FER test-split (PrivateTest) faces with a FER+ image name."""
    with open(shared_ferplus / "fer2013new.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    pixels = np.load(lzma.open(shared_ferplus / "fer2013_pixels.npy.xz"))
    chosen = [i for i, row in enumerate(rows) if row[0] == "PrivateTest" and row[1]][:NUM_REAL_IMAGES]
    return pixels[chosen]


def random_faces(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth-ish random faces: a few gradients and blobs, so crops have texture and flat areas."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:height, :width]
    images = []
    for _ in range(n):
        img = rng.uniform(0, 80) + rng.uniform(-1, 1) * rows + rng.uniform(-1, 1) * cols
        for _ in range(4):
            cy, cx, s = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(3, 12)
            img = img + rng.uniform(-90, 90) * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * s * s))
        img = img + rng.normal(0, 6, img.shape)
        images.append(np.clip(np.round(img), 0, 255))
    return np.stack(images).astype(np.uint8)


def reference_preprocess(images: np.ndarray, boxes, params: list[dict]) -> np.ndarray:
    return np.stack([reference_normalize(reference_crop(im, b, p)) for im, b, p in zip(images, boxes, params)])


def assert_crops_match(actual: np.ndarray, expected: np.ndarray) -> None:
    """float32 sampling may round a value sitting on x.5 the other way: allow rare ±1."""
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 1e-3


# ---------------------------------------------------------------- tests
def test_evaluation_preprocess_matches_reference_on_real_faces(real_test_images: np.ndarray) -> None:
    images = real_test_images
    out = preprocess(images)
    assert out.shape == (len(images), 1, OUTPUT_SIZE, OUTPUT_SIZE) and out.dtype == np.float32
    expected = reference_preprocess(images, [(0, 0, 48, 48)] * len(images), [IDENTITY] * len(images))
    assert np.abs(out[:, 0] - expected).mean() < MAX_MEAN_ABS_DIFF
    # Every crop is normalised: zero mean, unit RMS.
    assert np.allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    assert np.allclose(np.sqrt((out**2).mean(axis=(1, 2, 3))), 1, atol=1e-4)


def test_evaluation_preprocess_matches_reference_on_synthetic_faces() -> None:
    images = random_faces(12, 48, 48, seed=1)
    expected = reference_preprocess(images, [(0, 0, 48, 48)] * len(images), [IDENTITY] * len(images))
    assert np.abs(preprocess(images)[:, 0] - expected).mean() < MAX_MEAN_ABS_DIFF


def test_augmented_crops_match_reference() -> None:
    images = random_faces(16, 48, 48, seed=2)
    boxes = torch.tensor([[0, 0, 48, 48]] * len(images))
    params = sample_augment_params(len(images), torch.Generator().manual_seed(3))
    assert params.flip.any() and not params.flip.all()
    dicts = params_to_dicts(params)
    crops = crop(torch.from_numpy(images), boxes, params).numpy()
    expected = np.stack([reference_crop(im, (0, 0, 48, 48), p) for im, p in zip(images, dicts)])
    assert_crops_match(crops, expected)
    normalised = normalize(torch.from_numpy(expected)).numpy()[:, 0]
    assert np.abs(normalised - np.stack([reference_normalize(c) for c in expected])).max() < 1e-4


def test_large_transforms_reach_far_mirror_copies() -> None:
    """Shifts and scales far beyond the augmentation ranges still follow the mirroring rule."""
    images = random_faces(3, 20, 30, seed=4)
    dicts = [
        dict(IDENTITY, scale_y=3.0, scale_x=2.5, angle=33.0),
        dict(IDENTITY, shift_y=-40.0, shift_x=55.0, flip=True),
        dict(IDENTITY, skew_y=0.7, skew_x=-0.4, scale_y=0.3, angle=-170.0),
    ]
    boxes = [(0, 0, 30, 20)] * 3
    crops = crop(torch.from_numpy(images), torch.tensor(boxes), params_from_dicts(dicts)).numpy()
    assert_crops_match(crops, np.stack([reference_crop(im, b, p) for im, b, p in zip(images, boxes, dicts)]))


def test_non_square_offset_boxes_are_honoured() -> None:
    images = random_faces(3, 60, 50, seed=5)
    boxes = [(5, 10, 45, 40), (0, 0, 50, 60), (20, 3, 50, 60)]  # (left, top, right, bottom)
    out = preprocess(images, np.array(boxes))
    expected = reference_preprocess(images, boxes, [IDENTITY] * 3)
    assert np.abs(out[:, 0] - expected).mean() < MAX_MEAN_ABS_DIFF
    # A different box gives a different crop: the box is really used.
    assert np.abs(out[0] - preprocess(images[:1])[0]).mean() > 0.1


def test_identity_params_reproduce_the_evaluation_crop_exactly() -> None:
    images = torch.from_numpy(random_faces(5, 48, 48, seed=6))
    boxes = torch.tensor([[0, 0, 48, 48]] * 5)
    params = sample_augment_params(5, torch.Generator().manual_seed(0))
    identity = AugmentParams(
        **{k: torch.zeros_like(params.shift_y) for k in ("shift_y", "shift_x", "angle", "skew_y", "skew_x")},
        scale_y=torch.ones(5, dtype=torch.float64), scale_x=torch.ones(5, dtype=torch.float64),
        flip=torch.zeros(5, dtype=torch.bool),
    )
    evaluation = preprocess(images)
    assert torch.equal(normalize(crop(images, boxes, identity)), evaluation)
    assert torch.equal(normalize(crop(images, boxes, identity_params(5))), evaluation)
    assert not torch.equal(normalize(crop(images, boxes, params)), evaluation)


def test_flip_mirrors_the_crop() -> None:
    images = torch.from_numpy(random_faces(4, 48, 48, seed=7))
    boxes = torch.tensor([[0, 0, 48, 48]] * 4)
    params = sample_augment_params(4, torch.Generator().manual_seed(1))
    flipped = params.select(slice(None))
    flipped.flip = ~params.flip
    a, b = crop(images, boxes, params), crop(images, boxes, flipped)
    assert_crops_match(a.numpy(), b.flip(-1).numpy())


def test_sampled_augmentation_parameters_follow_their_distributions() -> None:
    n = 20000
    p = sample_augment_params(n, torch.Generator().manual_seed(0))
    for name, bound in (("shift_y", MAX_SHIFT), ("shift_x", MAX_SHIFT), ("angle", MAX_ANGLE_DEG),
                        ("skew_y", MAX_SKEW), ("skew_x", MAX_SKEW)):
        v = getattr(p, name)
        assert v.shape == (n,) and v.abs().max() <= bound
        # Uniform on (-bound, bound): nearly reaches both ends, mean 0, variance bound²/3.
        assert v.min() < -0.99 * bound and v.max() > 0.99 * bound
        assert abs(v.mean()) < 0.03 * bound and abs(v.var() / bound**2 - 1 / 3) < 0.02
    assert MAX_SHIFT == pytest.approx(64 * 0.08)
    for name in ("scale_y", "scale_x"):
        v = getattr(p, name)
        enlarged = v >= 1
        assert ((v >= 1 / MAX_SCALE) & (v <= MAX_SCALE)).all()
        # Half the draws are inverted; 5 standard deviations of a binomial(20000, 1/2) ≈ 354.
        assert abs(int(enlarged.sum()) - n / 2) < 5 * math.sqrt(n / 4)
        assert v[enlarged].max() > 1.049 and v[~enlarged].min() < 1 / 1.049
        # The inverted ones are 1 / U(1, 1.05): their inverses are uniform with mean 1.025.
        assert abs(float((1 / v[~enlarged]).mean()) - 1.025) < 0.001
        assert abs(float(v[enlarged].mean()) - 1.025) < 0.001
    assert p.flip.dtype == torch.bool
    assert abs(int(p.flip.sum()) - n / 2) < 5 * math.sqrt(n / 4)
    # The parameters are independent of each other.
    assert abs(np.corrcoef(p.shift_y.numpy(), p.angle.numpy())[0, 1]) < 0.05


def test_augmented_batches_vary_and_stay_normalised() -> None:
    images = random_faces(1, 48, 48, seed=8).repeat(64, axis=0)
    out = preprocess(images, augment=True, generator=torch.Generator().manual_seed(0))
    assert len({o.tobytes() for o in out}) == 64  # the same face, 64 different augmentations
    assert np.allclose(np.sqrt((out**2).mean(axis=(1, 2, 3))), 1, atol=1e-4)


def test_seeded_generator_reproduces_augmentation() -> None:
    images = random_faces(8, 48, 48, seed=9)
    a = preprocess(images, augment=True, generator=torch.Generator().manual_seed(5))
    b = preprocess(images, augment=True, generator=torch.Generator().manual_seed(5))
    c = preprocess(images, augment=True, generator=torch.Generator().manual_seed(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_numpy_in_numpy_out_torch_in_torch_out() -> None:
    images = random_faces(3, 48, 48, seed=10)
    out_np = preprocess(images)
    out_t = preprocess(torch.from_numpy(images))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32 and out_t.device.type == "cpu"
    assert np.array_equal(out_np, out_t.numpy())
    assert preprocess(images[:0]).shape == (0, 1, OUTPUT_SIZE, OUTPUT_SIZE)


def test_flat_image_is_left_unscaled() -> None:
    """A constant crop equalises to all ones, its plane removes everything, and RMS ~0 is not divided."""
    out = preprocess(np.full((1, 48, 48), 77, dtype=np.uint8))
    assert np.isfinite(out).all() and np.abs(out).max() < 1e-5


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((2, 48, 48), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((48, 48), dtype=np.uint8))
    with pytest.raises(ValueError, match="boxes"):
        preprocess(np.zeros((2, 48, 48), dtype=np.uint8), np.zeros((3, 4), dtype=np.int64))


@pytest.mark.cuda
def test_cpu_and_cuda_agree() -> None:
    images = random_faces(32, 48, 48, seed=11)
    boxes = torch.tensor([[0, 0, 48, 48]] * 32)
    cpu = preprocess(torch.from_numpy(images))
    gpu = preprocess(torch.from_numpy(images).cuda())
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().mean() < MAX_MEAN_ABS_DIFF
    # The same explicit augmentation parameters give the same crops on both devices.
    images_t = torch.from_numpy(images)
    params = sample_augment_params(32, torch.Generator().manual_seed(0))
    assert_crops_match(
        crop(images_t, boxes, params).numpy(), crop(images_t.cuda(), boxes.cuda(), params.to("cuda")).cpu().numpy()
    )
    # A CUDA generator drives augmentation on the GPU, reproducibly.
    runs = [
        preprocess(images_t.cuda(), augment=True, generator=torch.Generator(device="cuda").manual_seed(3))
        for _ in range(2)
    ]
    assert runs[0].device.type == "cuda" and torch.equal(runs[0], runs[1])


def test_block_boundaries_do_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    images = random_faces(7, 48, 48, seed=12)
    whole = preprocess(images, augment=True, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(transforms, "CROP_BLOCK", 3)
    assert np.array_equal(whole, preprocess(images, augment=True, generator=torch.Generator().manual_seed(1)))
