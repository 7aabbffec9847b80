"""Image files without torch: which box to crop, how a file is opened safely (size limits, truncated
files), its EXIF orientation and upright size, and the one line that says why a file was skipped.

images.py decodes on top of this for the loader workers; predict --model (onnxruntime) and the dataset
scan use it without torch.
"""


from __future__ import annotations

import contextlib
import io
import math
import os
import random
import warnings
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

from distrib.preprocess import VAL_CROP_FRACTION  # resize to crop / 0.875 (256 for 224), then centre crop

SCALE = (0.08, 1.0)  # RandomResizedCrop's defaults
RATIO = (3 / 4, 4 / 3)

Box = tuple[int, int, int, int]  # left, top, width, height, in pixels of the upright full-size image
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class BadImage(Exception):
    """A file that cannot be used as a training image; str(e) is the reason, without the path."""


# ---------------------------------------------------------------- dataset layout (no decoding)



# ---------------------------------------------------------------- crop geometry (sizes, not pixels)

def rrc_box(width: int, height: int, rng: random.Random, scale=SCALE, ratio=RATIO) -> Box:
    """torchvision's RandomResizedCrop.get_params on a size instead of a tensor: same distribution."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)  # inclusive, like torch.randint(0, height - h + 1)
            left = rng.randint(0, width - w)
            return left, top, w, h
    # Fallback to a central crop, clamped to the allowed aspect ratios.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def val_geometry(width: int, height: int, size: int, short: int | None = None) -> tuple[int, int, int, int]:
    """Resize(short) then CenterCrop(size), as torchvision computes them: new_w, new_h, left, top.
    short defaults to int(size / 0.875)."""
    short = short or int(size / VAL_CROP_FRACTION)
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


# ---------------------------------------------------------------- decoding

class Source(NamedTuple):
    """An image file read into memory: PIL's lazy view of its header, and its bytes."""
    img: Image.Image
    data: bytearray


def _bomb_message(width: int, height: int) -> str:
    return f"decompression bomb: {width} x {height} pixels exceeds PIL's limit of {Image.MAX_IMAGE_PIXELS}"


def _header_size(data: bytearray) -> tuple[int, int] | None:
    """Width and height of an image PIL refuses to open (over twice its limit), from the header alone."""
    Image.init()
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and accept(bytes(data[:16])) is not True:
            continue
        try:
            return factory(io.BytesIO(data), "").size
        except Exception:
            continue
    return None


@contextlib.contextmanager
def open_image(path: str | bytes) -> Iterator[Source]:
    """Read the file (one read: PIL's parser makes dozens of small ones) and parse its header.
    `path` may also be the file's bytes already (a member of a tar shard, distrib/data/shards.py).

    Decompression bombs (over PIL's MAX_IMAGE_PIXELS) raise BadImage; PIL's per-file warnings
    (palette transparency, odd EXIF, ...) are muted, or they would flood every worker's log.
    """
    if isinstance(path, (bytes, bytearray)):
        data = bytearray(path)
    else:
        with open(path, "rb") as f:
            data = bytearray(f.read())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            size = _header_size(data)
            raise BadImage(_bomb_message(*size) if size else "decompression bomb: over PIL's pixel limit") from None
        with img:
            limit = Image.MAX_IMAGE_PIXELS
            if limit is not None and img.width * img.height > limit:
                # PIL only warns between 1x and 2x its limit; we skip: no training image is that big.
                raise BadImage(_bomb_message(img.width, img.height))
            yield Source(img, data)


def exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: the pixels are still fine
        return 1


def upright_size(img: Image.Image) -> tuple[int, int]:
    """Width and height as displayed, i.e. after the EXIF orientation is applied."""
    return (img.height, img.width) if exif_orientation(img) in _TRANSPOSED else img.size


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit PNG/TIFF (I;16, I;16B, I): PIL's own convert clips at 255 instead of scaling.
        a = np.asarray(img).astype(np.float64)
        a = a * (255 / 65535) if img.mode != "F" else a
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")  # L, 1, P, PA, RGBA (alpha dropped, as torchvision), CMYK, YCbCr, ...


def skip_reason(path: str | bytes, exc: BaseException) -> str:
    """One line for a file (or a shard member's bytes) that was skipped: what is wrong, without a traceback."""
    if isinstance(exc, BadImage):
        return str(exc)
    try:
        if (len(path) if isinstance(path, (bytes, bytearray)) else os.path.getsize(path)) == 0:
            return "empty file (0 bytes)"
    except OSError as e:
        return f"cannot read file ({e.strerror})"
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image PIL can identify"
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, RuntimeError):  # torchvision: "decode_jpeg, FILE.cpp:LINE, what went wrong"
        message = message.split(", ")[-1]
    if isinstance(exc, (OSError, RuntimeError)):
        return f"corrupt or truncated image ({message})"
    return f"unreadable image ({type(exc).__name__}: {message})"
