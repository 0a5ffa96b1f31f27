"""Face crops, training augmentation and input normalisation, as batched tensor operations.

Every image of a batch gets its own affine crop (``crop``): output pixel ``(r, c)`` samples
the face at ``(r, c) @ M + offset`` with bilinear interpolation, mirroring the image about its
outer pixel edges outside it, and the result is rounded to 8 bits. ``normalize`` then
equalises each crop's histogram into [-1, 1], removes the least-squares plane and divides by
the root mean square. Both run unchanged on the CPU and on CUDA: the per-image matrices become
one sampling grid for ``grid_sample``, the histograms one scatter-add over offset indices and
the plane fits a few row/column reductions, so nothing loops over images in Python.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from .fer_format import CROP_SIZE

#: Side of the square crop the networks see.
OUTPUT_SIZE = CROP_SIZE
#: The crop is centred on this output coordinate (before the random shift).
OUTPUT_CENTRE = OUTPUT_SIZE // 2
#: Output pixels span ``OUTPUT_SIZE - 1`` steps; a box of ``h`` rows spans ``h - 1`` steps.
OUTPUT_SPAN = OUTPUT_SIZE - 1

# Training augmentation ranges (uniform draws).
MAX_SHIFT = OUTPUT_SIZE * 0.08  # pixels, each axis
MAX_ANGLE_DEG = 20.0
MAX_SKEW = 0.05
MAX_SCALE = 1.05  # scale drawn from U(1, MAX_SCALE), replaced by its inverse half the time
FLIP_PROBABILITY = 0.5
INVERT_SCALE_PROBABILITY = 0.5

PIXEL_LEVELS = 256  # 8-bit crops
MAX_PIXEL = PIXEL_LEVELS - 1
MIN_RMS = 1e-6  # a flat crop is left unscaled instead of divided by ~0

#: Images are cropped in blocks of this many, to bound the sampling grid's memory.
CROP_BLOCK = 4096

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


@dataclass
class AugmentParams:
    """Per-image crop parameters, each a float64 tensor ``(N,)`` (``flip`` bool ``(N,)``).

    Shifts are in output pixels, ``angle`` in degrees, scales are factors on the box size.
    """

    shift_y: torch.Tensor
    shift_x: torch.Tensor
    angle: torch.Tensor
    skew_y: torch.Tensor
    skew_x: torch.Tensor
    scale_y: torch.Tensor
    scale_x: torch.Tensor
    flip: torch.Tensor

    def __len__(self) -> int:
        return len(self.flip)

    def select(self, index: Union[slice, torch.Tensor]) -> "AugmentParams":
        """The parameters of the images picked by ``index``."""
        return AugmentParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: Union[str, torch.device]) -> "AugmentParams":
        """The same parameters on ``device``."""
        return AugmentParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def identity_params(n: int, device: Union[str, torch.device] = "cpu") -> AugmentParams:
    """Parameters of the evaluation crop: no shift, rotation, skew or flip, scale 1."""
    zeros = torch.zeros(n, dtype=torch.float64, device=device)
    ones = torch.ones(n, dtype=torch.float64, device=device)
    return AugmentParams(
        shift_y=zeros, shift_x=zeros, angle=zeros, skew_y=zeros, skew_x=zeros,
        scale_y=ones, scale_x=ones, flip=torch.zeros(n, dtype=torch.bool, device=device),
    )


def sample_augment_params(
    n: int, generator: Optional[torch.Generator] = None, device: Union[str, torch.device] = "cpu"
) -> AugmentParams:
    """Draw independent training augmentations for ``n`` images.

    ``generator`` (on ``device``) makes the draw reproducible; None uses torch's global RNG.
    """
    # Draw where the generator lives (a CUDA generator cannot fill CPU tensors), then move.
    draw_device = generator.device if generator is not None else device

    def uniform(low: float, high: float) -> torch.Tensor:
        u = torch.rand(n, dtype=torch.float64, device=draw_device, generator=generator)
        return (low + (high - low) * u).to(device)

    def scale() -> torch.Tensor:
        s = uniform(1.0, MAX_SCALE)
        invert = uniform(0.0, 1.0) < INVERT_SCALE_PROBABILITY
        return torch.where(invert, 1.0 / s, s)

    return AugmentParams(
        shift_y=uniform(-MAX_SHIFT, MAX_SHIFT),
        shift_x=uniform(-MAX_SHIFT, MAX_SHIFT),
        angle=uniform(-MAX_ANGLE_DEG, MAX_ANGLE_DEG),
        skew_y=uniform(-MAX_SKEW, MAX_SKEW),
        skew_x=uniform(-MAX_SKEW, MAX_SKEW),
        scale_y=scale(),
        scale_x=scale(),
        flip=uniform(0.0, 1.0) < FLIP_PROBABILITY,
    )


def crop_matrices(boxes: torch.Tensor, params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ``M`` ``(N, 2, 2)`` and ``offset`` ``(N, 2)`` (float64, (row, column) order).

    Output pixel ``(r, c)`` samples the input at ``(r, c) @ M + offset``. ``boxes`` is
    ``(N, 4)`` (left, top, right, bottom). Flips are not included (see :func:`crop`).
    """
    boxes = boxes.to(torch.float64)
    left, top, right, bottom = boxes.unbind(1)
    height, width = bottom - top, right - left
    angle = torch.deg2rad(params.angle)
    cos, sin = torch.cos(angle), torch.sin(angle)
    one = torch.ones_like(cos)
    zero = torch.zeros_like(cos)

    def mat(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.stack([a, b], -1), torch.stack([c, d], -1)], -2)

    rotation = mat(cos, -sin, sin, cos)
    skew_rows = mat(one, params.skew_y, zero, one)
    skew_cols = mat(one, zero, params.skew_x, one)
    # The box's span (h - 1 steps) is stretched over the output's span (63 steps).
    scale = mat(params.scale_y * (height - 1) / OUTPUT_SPAN, zero, zero, params.scale_x * (width - 1) / OUTPUT_SPAN)
    m = rotation @ skew_rows @ skew_cols @ scale
    centre_in = torch.stack([(top + bottom) / 2, (left + right) / 2], -1)
    centre_out = torch.stack([OUTPUT_CENTRE + params.shift_y, OUTPUT_CENTRE + params.shift_x], -1)
    offset = centre_in - (centre_out.unsqueeze(1) @ m).squeeze(1)
    return m, offset


def crop(images: torch.Tensor, boxes: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Affine crops of ``images`` (uint8 ``(N, H, W)``) → uint8 ``(N, 64, 64)`` on the same device.

    Bilinear sampling; outside the image it is mirrored about its outer pixel edges (pixel -1
    is pixel 0), which is ``grid_sample``'s reflection padding with ``align_corners=False``.
    A flipped image samples output column ``63 - c`` instead of ``c``.
    """
    n, height, width = images.shape
    device = images.device
    params = params.to(device)
    m, offset = crop_matrices(boxes.to(device), params)
    # Flipping the output horizontally is the substitution c -> 63 - c in the affine map.
    flip = params.flip[:, None]
    offset = torch.where(flip, offset + OUTPUT_SPAN * m[:, 1, :], offset)
    m = torch.stack([m[:, 0, :], torch.where(flip, -m[:, 1, :], m[:, 1, :])], 1)
    # Fold the pixel → normalised conversion (p -> (2p + 1) / size - 1) into one (r, c, 1) -> (x, y)
    # map, in float64 so only the final coordinates are rounded to float32.
    # (Divisions by Python numbers: a size tensor built on a GPU would be a host-to-device copy
    # that waits for the GPU.)
    linear = torch.stack((2 * m[..., 0] / height, 2 * m[..., 1] / width), -1)
    shift = torch.stack(((2 * offset[:, 0] + 1) / height - 1, (2 * offset[:, 1] + 1) / width - 1), -1)
    # grid_sample wants (x, y) = (column, row) last. The grid is built from per-row and per-column
    # parts by broadcasting rather than a matrix product, which TF32 settings would make inexact.
    linear, shift = linear.flip(-1).to(torch.float32), shift.flip(-1).to(torch.float32)
    steps = torch.arange(OUTPUT_SIZE, dtype=torch.float32, device=device)[None, :, None]
    by_row = steps * linear[:, None, 0, :] + shift[:, None, :]  # (N, 64, 2)
    by_col = steps * linear[:, None, 1, :]
    grid = by_row[:, :, None, :] + by_col[:, None, :, :]  # (N, 64, 64, 2)
    sampled = F.grid_sample(
        images.unsqueeze(1).to(torch.float32), grid,
        mode="bilinear", padding_mode="reflection", align_corners=False,
    )
    return sampled.squeeze(1).round_().clamp_(0, MAX_PIXEL).to(torch.uint8)


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops ``(N, 64, 64)`` → float32 ``(N, 1, 64, 64)``: histogram equalisation into
    [-1, 1], least-squares plane removal, division by the RMS (unless below 1e-6)."""
    n = crops.shape[0]
    device = crops.device
    # Values offset by 256 per image: one scatter-add gives every histogram, one take every lookup.
    # (scatter_add_ rather than bincount: bincount must read the maximum back to the host on CUDA.)
    # (Widened first, then offset in place: a uint8 + int64 broadcast is several times slower on a CPU.)
    index = crops.reshape(n, -1).to(torch.int64)
    index += (torch.arange(n, device=device) * PIXEL_LEVELS).unsqueeze(1)
    ones = torch.ones(1, dtype=torch.float32, device=device).expand(index.numel())
    histograms = torch.zeros(n * PIXEL_LEVELS, dtype=torch.float32, device=device)
    histograms = histograms.scatter_add_(0, index.view(-1), ones).view(n, PIXEL_LEVELS)  # exact: counts <= 4096
    cdf = histograms.cumsum(1)
    lut = cdf * (2 / cdf[:, MAX_PIXEL:]) - 1
    equalised = torch.take(lut, index).view(n, OUTPUT_SIZE, OUTPUT_SIZE)
    return _unit_rms(_remove_plane(equalised)).unsqueeze(1)


def _remove_plane(images: torch.Tensor) -> torch.Tensor:
    """Subtract from each ``(N, S, S)`` image (in place) its least-squares plane ``a + b*column + c*row``.

    On a full square grid the constant, the centred column and the centred row are orthogonal,
    so the fit splits into a mean and two slopes read off the row and column sums: exact
    least squares from reductions alone (a matrix product would lose precision under TF32).
    """
    size = images.shape[-1]
    centred = torch.arange(size, dtype=images.dtype, device=images.device) - (size - 1) / 2
    # sum over the grid of centred**2, for one axis: every centred value appears `size` times.
    norm = size * centred.square().sum()
    column_sums = images.sum(1)  # (N, S): summed over rows
    row_sums = images.sum(2)
    mean = column_sums.sum(1, keepdim=True) / size**2
    slope_col = (column_sums * centred).sum(1, keepdim=True) / norm
    slope_row = (row_sums * centred).sum(1, keepdim=True) / norm
    by_row = (mean + slope_row * centred)[:, :, None]
    by_col = (slope_col * centred)[:, None, :]
    return images.sub_(by_row).sub_(by_col)


def _unit_rms(images: torch.Tensor) -> torch.Tensor:
    """Divide each image (in place) by its root mean square, unless that is below :data:`MIN_RMS`."""
    count = images[0].numel()
    rms = torch.linalg.vector_norm(images, dim=(1, 2), keepdim=True) / math.sqrt(count)
    return images.mul_(torch.where(rms < MIN_RMS, 1.0, 1.0 / rms))


def preprocess(
    images: ArrayOrTensor,
    boxes: Optional[ArrayOrTensor] = None,
    augment: bool = False,
    generator: Optional[torch.Generator] = None,
) -> ArrayOrTensor:
    """Crop (augmenting when asked) and normalise faces into network inputs.

    Args:
        images: uint8 ``(N, H, W)`` numpy array or torch tensor on any device.
        boxes: ``(N, 4)`` integer face boxes (left, top, right, bottom); None = whole images.
        augment: draw a random training augmentation per image (else the evaluation crop).
        generator: torch generator on the images' device, for reproducible augmentation.

    Returns:
        float32 ``(N, 1, 64, 64)``, a numpy array for numpy input, else a tensor on the
        images' device.
    """
    as_numpy = isinstance(images, np.ndarray)
    images = torch.from_numpy(np.ascontiguousarray(images)) if as_numpy else images
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}")
    n, height, width = images.shape
    device = images.device
    if boxes is None:
        boxes = torch.zeros(n, 4, dtype=torch.int64, device=device)  # (left, top) = (0, 0)
        boxes[:, 2], boxes[:, 3] = width, height
    else:
        boxes = torch.as_tensor(boxes).to(device)
        if boxes.shape != (n, 4):
            raise ValueError(f"boxes must have shape ({n}, 4), got {tuple(boxes.shape)}")
    params = sample_augment_params(n, generator, device) if augment else identity_params(n, device)
    outputs = [
        normalize(crop(images[i:i + CROP_BLOCK], boxes[i:i + CROP_BLOCK], params.select(slice(i, i + CROP_BLOCK))))
        for i in range(0, n, CROP_BLOCK)
    ]
    if not outputs:
        out = torch.zeros(0, 1, OUTPUT_SIZE, OUTPUT_SIZE, device=device)
    else:
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)  # one block: no copy
    return out.numpy() if as_numpy else out
