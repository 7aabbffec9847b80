"""The ImageFolder layout, checked without torch (the launcher runs this before anything starts).

DATA/train/<class>/<image> and DATA/val/<class>/<image>, with the same classes in both.
"""

from __future__ import annotations

import os

from distrib.config import ConfigError

# torchvision.datasets.folder.IMG_EXTENSIONS, repeated here so this module needs no torch.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def find_class_dirs(split_dir: str) -> list[str]:
    # Same rule as torchvision's find_classes: every sub-directory is a class, sorted by name.
    return sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())


def _has_image(class_dir: str) -> bool:
    # make_dataset walks class folders recursively, following links; stop at the first image.
    for _, _, names in os.walk(class_dir, followlinks=True):
        if any(is_image_file(n) for n in names):
            return True
    return False


def check_dataset(root: str) -> list[str]:
    """The class names of an ImageFolder root with train/ and val/; ConfigError saying how to fix it otherwise."""
    fix_root = "pass --data pointing at an ImageFolder root with train/ and val/"
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise ConfigError(f"data dir {root} {what}; {fix_root}")
    classes = {}
    for split in ("train", "val"):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise ConfigError(f"{root} has no {split}/ folder; {fix_root} (one sub-folder per class in each)")
        classes[split] = find_class_dirs(split_dir)
        if not classes[split]:
            raise ConfigError(f"{split_dir} has no class folders; put each class's images in {split_dir}/CLASS/")
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise ConfigError(
            f"train/ and val/ have different classes (only in train: {', '.join(only_train) or '-'}; "
            f"only in val: {', '.join(only_val) or '-'}); give both splits the same class folders")
    for split in ("train", "val"):
        for name in classes[split]:
            class_dir = os.path.join(root, split, name)
            if not _has_image(class_dir):
                raise ConfigError(f"class folder {class_dir} is empty (no {'/'.join(IMG_EXTENSIONS)} files); "
                                  "add images or remove the folder")
    return classes["train"]


def scan_images(root: str) -> tuple[int, list[str]]:
    """Open every image's header (fast: no pixel decoding). Returns (files seen, unreadable paths)."""
    from PIL import Image

    total, bad = 0, []
    for split in ("train", "val"):
        for folder, _, files in os.walk(os.path.join(root, split), followlinks=True):
            for name in sorted(files):
                if not is_image_file(name):
                    continue
                total += 1
                path = os.path.join(folder, name)
                try:
                    with Image.open(path) as im:
                        im.size  # noqa: B018 - the header is parsed on open; size proves it
                except Exception:
                    bad.append(path)
    return total, bad
