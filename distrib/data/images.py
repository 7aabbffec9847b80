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

Opening, EXIF and crop geometry are torch-free, in image_files.py (re-exported here).
"""

from __future__ import annotations

import random
from typing import Callable

import numpy as np
from PIL import ImageOps

from distrib.data.image_files import (  # noqa: F401
    Box,
    Source,
    _to_rgb,
    exif_orientation,
    open_image,
    rrc_box,
    skip_reason,
    upright_size,
    val_geometry,
)


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
