"""The ImageFolder layout, checked without torch (the launcher runs this before anything starts).

DATA/train/<class>/<image> and DATA/val/<class>/<image>, with the same classes in both.
"""

from __future__ import annotations

import os

from distrib.config import ConfigError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def class_folders(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _has_image(folder: str) -> bool:
    for root, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
            return True
    return False


def check_dataset(root: str | None) -> list[str]:
    """The class list, or ConfigError naming the first problem and its fix."""
    fix = "pass --data pointing at an ImageFolder root holding train/<class>/*.jpg and val/<class>/*.jpg"
    if not root:
        raise ConfigError(f"no data given; {fix}, or use --synthetic")
    if not os.path.isdir(root):
        raise ConfigError(f"data dir {root} does not exist; {fix}")
    splits = {}
    for split in ("train", "val"):
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise ConfigError(f"{root} has no {split}/ folder; {fix}")
        splits[split] = class_folders(folder)
        if not splits[split]:
            raise ConfigError(f"{folder} has no class folders; {fix}")
        for name in splits[split]:
            if not _has_image(os.path.join(folder, name)):
                raise ConfigError(f"class folder {os.path.join(folder, name)} has no images; "
                                  "add images or remove the folder")
    if splits["train"] != splits["val"]:
        only_train = sorted(set(splits["train"]) - set(splits["val"]))
        only_val = sorted(set(splits["val"]) - set(splits["train"]))
        raise ConfigError(f"train/ and val/ have different classes (only in train: {', '.join(only_train) or '-'}; "
                          f"only in val: {', '.join(only_val) or '-'}); give both splits the same class folders")
    return splits["train"]


def scan_images(root: str) -> tuple[int, list[str]]:
    """Open every image's header (fast: no pixel decoding). Returns (files seen, unreadable paths)."""
    from PIL import Image

    total, bad = 0, []
    for split in ("train", "val"):
        for folder, _, files in os.walk(os.path.join(root, split), followlinks=True):
            for name in sorted(files):
                if not name.lower().endswith(IMG_EXTENSIONS):
                    continue
                total += 1
                path = os.path.join(folder, name)
                try:
                    with Image.open(path) as im:
                        im.size  # noqa: B018 - the header is parsed on open; size proves it
                except Exception:
                    bad.append(path)
    return total, bad
