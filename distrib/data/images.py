"""Image files: which files are images, and how one becomes a uint8 crop, fast and safely.

distrib/data/datasets.py builds its datasets on `load_train` and `load_val`:

    img = load_train(path, 224, random.Random(key))   # 3 x 224 x 224 uint8 tensor: RandomResizedCrop + flip
    img = load_val(path, 224)                         # resize shorter side to 256, centre crop 224

Why this beats torchvision's ImageFolder + RandomResizedCrop + ToTensor + Normalize (see
benchmarks/loader_bench.py for the figures):
1. the crop box is chosen from the header's size, before a single pixel is decoded;
2. a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, PIL's `draft`) when the crop
   is going to be shrunk by at least that factor anyway; at full scale, torchvision's decode_jpeg
   writes straight into a tensor (~40% faster than PIL's decode plus conversion to an array);
3. the resize is torch's uint8 antialiased bilinear kernel (AVX2), ~2.5x faster than PIL's, with
   the same result (mean difference ~0.01 grey levels);
4. the result stays uint8 (a quarter of float32's bytes through the worker queues); conversion
   to float and normalisation happen on the device, in data.to_device.
Unreadable files raise an exception; `skip_reason` turns it into one line for Batch.skipped.

`check_dataset` reads directory names only and this module imports torch lazily, so the launcher's
pre-flight check can use it without paying for torch.
"""

from __future__ import annotations

from distrib.preprocess import VAL_CROP_FRACTION  # resize to crop / 0.875 (256 for 224), then centre crop
import contextlib
import io
import math
import os
import random
import warnings
from typing import Callable, Iterator, NamedTuple

import numpy as np
from PIL import Image, ImageOps



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


def decode(src: Source, shrink: float):
    """Upright RGB pixels as a 3 x H x W uint8 tensor (H x W x 3 in memory), and the scale s of the decode.

    shrink: how much the caller is about to shrink the image anyway; a JPEG is decoded at 1/s with
    s in 8, 4, 2 the largest <= shrink (libjpeg's DCT scaling: cheaper, and a fine filter).
    Pixel (x, y) of the result covers full-size pixels [s*x, s*(x+1)) x [s*y, s*(y+1)).
    """
    import torch  # here, not at the top: check_dataset must stay importable without torch
    from torchvision.io import ImageReadMode, decode_jpeg

    img = src.img
    s = next((s for s in (8, 4, 2) if s <= shrink), 1)
    orientation = exif_orientation(img)
    if s == 1 and img.format == "JPEG" and img.mode in ("RGB", "L") and orientation == 1:
        # The common case, full size: torchvision's libjpeg-turbo decoder writes straight into a
        # tensor, ~40% faster than PIL's decode + conversion to an array.
        return decode_jpeg(torch.frombuffer(src.data, dtype=torch.uint8), mode=ImageReadMode.RGB), 1
    if s > 1:
        width = img.width
        result = img.draft("RGB", (width // s, img.height // s))  # None unless JPEG
        s = round(width / result[1][2]) if result else 1  # the scale libjpeg really uses
    if orientation != 1:
        ImageOps.exif_transpose(img, in_place=True)
    return torch.from_numpy(np.array(_to_rgb(img))).permute(2, 0, 1), s


def _resize(pixels, height: int, width: int):
    """Antialiased bilinear resize of 3 x H x W uint8 pixels (torch's AVX2 uint8 kernel)."""
    import torch.nn.functional as F

    if pixels.shape[-2:] == (height, width):
        return pixels
    return F.interpolate(pixels[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


def resized_crop(path: str, size: int, choose_box: Callable[[int, int], Box]):
    """The region choose_box(width, height) picks in the upright image, resized to 3 x size x size uint8.

    The box is chosen from the header's size, in full-size pixels, before anything is decoded; the JPEG
    may then be decoded at 1/s and the box is scaled to match (rounding moves an edge by less than
    half a decoded pixel, i.e. under half an output pixel).
    """
    with open_image(path) as src:
        left, top, w, h = choose_box(*upright_size(src.img))
        pixels, s = decode(src, shrink=min(w, h) / size)
    x0, y0, x1, y1 = (round(v / s) for v in (left, top, left + w, top + h))
    return _resize(pixels[:, y0:y1, x0:x1], size, size)


def load_train(path: str, size: int, rng: random.Random, augment=None):
    """RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3)) + RandomHorizontalFlip: 3 x size x size uint8,
    then `augment` (distrib/recipe/augment.py), drawn from the same rng."""
    out = resized_crop(path, size, lambda width, height: rrc_box(width, height, rng))
    out = out.flip(2) if rng.random() < 0.5 else out
    return augment(out, rng) if augment else out


def load_val(path: str, size: int, resize: int | None = None):
    """Resize the shorter side to `resize` (default int(size / 0.875)), centre crop size x size: 3 x size x size uint8."""
    with open_image(path) as src:
        width, height = upright_size(src.img)
        new_w, new_h, left, top = val_geometry(width, height, size, resize)
        pixels, s = decode(src, shrink=min(width / new_w, height / new_h))
    # At 1/s, libjpeg pads the last row and column up to a whole pixel: resize only what is the image.
    pixels = pixels[:, : round(height / s), : round(width / s)]
    return _resize(pixels, new_h, new_w)[:, top:top + size, left:left + size]


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
