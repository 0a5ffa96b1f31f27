"""Reading image files: regular files only, a pixel limit checked before decoding, no library chatter.

The prepared FER folders (:mod:`ferplus.data`) and the photos of ``predict.py``
(:mod:`ferplus.faces`) are both read through :func:`read_image_file`. It never waits on a FIFO,
never lets a small file that unpacks to a huge picture take the machine's memory, and keeps the
messages libpng and OpenCV print about damaged files off the terminal: the caller reports the
file in one line of its own.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import warnings
from typing import Iterator, Optional

import cv2
import numpy as np
from PIL import Image

from .fileio import read_regular_file

#: Images with more pixels are not decoded. 2**27 (134 million, e.g. 13,400 × 10,000) passes the
#: full resolution of every common camera up to 108-megapixel phones; predict.py takes 1.4 GB at
#: most on one (a 134-megapixel JPEG, faces found on a shrunken copy, --annotate), while
#: OpenCV's own limit of 2**30 pixels lets a 1 MB PNG take more than 5 GB.
MAX_IMAGE_PIXELS = 2**27
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = 24  # a PNG's first chunk, IHDR, holds the width and height in bytes 16-23


class UnreadableImage(Exception):
    """Why an image file cannot be used, in a few words; the caller names the file."""


def read_image_file(path: os.PathLike, flags: int) -> np.ndarray:
    """Decode the image file ``path`` with OpenCV ``flags`` (e.g. ``cv2.IMREAD_GRAYSCALE``).

    Raises :class:`UnreadableImage` for a missing file, one that is not a regular file, one
    larger than :data:`MAX_IMAGE_PIXELS` (by its header, read before decoding: a format whose
    header Pillow cannot read is not decoded) and one OpenCV cannot decode. Call it inside
    :func:`native_stderr_silenced` to keep libpng's own messages off stderr.
    """
    try:
        data = read_regular_file(path)
    except FileNotFoundError:
        raise UnreadableImage("no such file") from None
    except OSError as e:
        raise UnreadableImage(f"cannot be read ({e.strerror or e})") from None
    too_large = _too_large(data)
    if too_large:
        raise UnreadableImage(too_large)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags) if data else None
    except cv2.error:  # formats OpenCV rejects by raising rather than returning None
        image = None
    if image is None:
        raise UnreadableImage("not a readable image")
    return image


def _too_large(data: bytes) -> Optional[str]:
    """Why the image's header makes it too large to decode (or its size cannot be read from one), or None."""
    limit = f"the limit is {MAX_IMAGE_PIXELS:,} pixels"
    if data[:8] == PNG_SIGNATURE:  # the common case, read without a library
        if len(data) < _IHDR_END or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:_IHDR_END])
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:  # reads the header only
                    width, height = image.size
        except Image.DecompressionBombError:  # Pillow's own limit, above ours
            return f"too large to decode ({limit})"
        except Exception:
            # A format Pillow does not know (Radiance HDR, PFM): OpenCV would decode it whatever its
            # size, since its own limit is fixed when cv2 is imported, so it is not decoded at all.
            return "not a readable image (not a format whose size can be checked before decoding)"
    if width * height > MAX_IMAGE_PIXELS:
        return f"too large to decode: {width}x{height} pixels ({limit})"
    return None


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Send what native code writes to the process's stderr to the null device meanwhile.

    libpng prints its complaints about a damaged PNG straight to the C library's stderr, which
    no OpenCV setting reaches (cv2.setLogLevel silences OpenCV's own lines only); the damaged
    file is reported by the caller anyway. Python's ``sys.stderr`` is flushed first, so nothing
    written before is lost.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to protect
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
