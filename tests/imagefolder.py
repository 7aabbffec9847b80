"""Small, learnable ImageFolder datasets on disk for the tests (and broken files to go with them).

    from imagefolder import make_imagefolder, corrupt_file
    root = make_imagefolder(tmp_path / "data")           # 4 classes, 96 train / 29 val JPEGs, 32 px
    corrupt_file(root / "train" / "class0" / "0000.jpg", "truncated")

Each class is a distinct hue, with random brightness and smooth blotches: resnet18 at 32 px learns it
to >90% val accuracy in 2-3 epochs, so training tests can assert that the model learned something. The val count is prime (29) by default, so it divides evenly by no
world size >1 and sharding bugs (padding, duplicates) show up in val_samples.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image

_EXT = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp"}


def class_image(label: int, classes: int, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """An RGB image of class `label`: its own hue, with random brightness and smooth blotches."""
    w, h = size
    r, g, b = colorsys.hsv_to_rgb(label / classes, 0.8, 0.85)
    base = np.array([r, g, b]) * 255 * rng.uniform(0.8, 1.1)
    # Low-frequency texture: crops and resizes (RandomResizedCrop upsamples small crops) keep its
    # statistics, so BatchNorm's running estimates from training fit the validation images too.
    blotches = Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = base[None, None, :] + (np.asarray(blotches, np.float64)[..., None] - 128) * 0.25
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_imagefolder(root, classes: int = 4, train_per_class: int = 24, val_per_class: int = 7,
                     size: int | tuple[int, int] = 32, seed: int = 0, fmt: str = "JPEG",
                     val_extra: int = 1) -> Path:
    """Write root/{train,val}/classK/NNNN.ext and return root; class 0 gets `val_extra` more val images."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    wh = (size, size) if isinstance(size, int) else tuple(size)
    ext = _EXT.get(fmt.upper(), "." + fmt.lower())
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            count = per_class + (val_extra if split == "val" and label == 0 else 0)
            for n in range(count):
                img = class_image(label, classes, wh, rng)
                img.save(folder / f"{n:04d}{ext}", fmt, **({"quality": 92} if fmt.upper() == "JPEG" else {}))
    return root


def corrupt_file(path, kind: str = "truncated") -> Path:
    """Break an image file in place: truncated | empty | text | garbage (image magic, then junk)."""
    path = Path(path)
    data = path.read_bytes() if path.exists() else b""
    if kind == "truncated":
        path.write_bytes(data[: max(len(data) // 2, 16)])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image, whatever its name says\n")
    elif kind == "garbage":
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    else:
        raise ValueError(f"unknown corruption {kind!r}: use truncated, empty, text or garbage")
    return path


def make_downloaded(root, classes: int = 4, per_class: int = 30, size: int = 32, seed: int = 0) -> Path:
    """A dataset as people download it: class folders at the root (no train/ or val/), mixed formats and
    extension cases, a class name with a space and a non-ASCII letter, and one broken file."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    names = ["café crème", "dog", "fish", "zebra"][:classes] + [f"class{i}" for i in range(4, classes)]
    kinds = [("JPEG", ".jpg", {"quality": 92}), ("JPEG", ".JPEG", {"quality": 92}), ("PNG", ".png", {}),
             ("WEBP", ".webp", {})]
    for label, name in enumerate(names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            fmt, ext, options = kinds[n % len(kinds)]
            class_image(label, classes, (size, size), rng).save(folder / f"img {n:03d}{ext}", fmt, **options)
    corrupt_file(root / names[1] / "img 001.JPEG", "truncated")
    return root
