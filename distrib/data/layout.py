"""The ImageFolder layout, checked without torch (the launcher runs this before anything starts).

DATA/train/<class>/<image> and DATA/val/<class>/<image>, with the same classes in both; or train/ alone
with --val-split F; or class folders at the root (DATA/<class>/<image>, as most datasets download) with
--val-split F: the root is then the train split. Folders whose names start with "." (.ipynb_checkpoints, .git, .distrain-index) are
not classes, at any level: tools put them there, users never mean them as data.
"""

from __future__ import annotations

import os

from distrib.config import ConfigError

INDEX_FOLDER = ".distrain-index"  # the sample index beside the data (distrib/data/index.py)
SYNTHETIC_CLASSES = [f"class{i}" for i in range(10)]  # --synthetic: the classes of its random images

# torchvision.datasets.folder.IMG_EXTENSIONS, repeated here so this module needs no torch.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FIX_ROOT = "pass --data pointing at an ImageFolder root with train/ and val/"


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def find_class_dirs(split_dir: str) -> list[str]:
    # torchvision's find_classes rule (every sub-directory is a class, sorted by name), less hidden folders.
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not is_hidden(e.name))


def hidden_dirs(split_dir: str) -> list[str]:
    """The hidden folders of a split that find_class_dirs leaves out (`distrain check` names them), less
    distrain's own sample index."""
    return sorted(e.name for e in os.scandir(split_dir)
                  if e.is_dir() and is_hidden(e.name) and e.name != INDEX_FOLDER)


def is_class_root(root: str) -> bool:
    """DATA/<class>/<image>: no train/ and no val/, the class folders at the root."""
    return not os.path.isdir(os.path.join(root, "train")) and not os.path.isdir(os.path.join(root, "val"))


def split_dir(root: str, split: str) -> str:
    """The folder holding a split's class folders: DATA/train, DATA/val, or DATA itself for class folders
    at the root (its only split is train, validated with --val-split)."""
    return root if split == "train" and is_class_root(root) else os.path.join(root, split)


def tool_val_split(root: str | None, val_split: float | None) -> float | None:
    """The --val-split for a tool that reads every image of DATA (pack, index, bench): as given, else a
    stand-in for a layout without val/ (train/ alone, class folders at the root), whose split is drawn
    only when a run trains on it."""
    if val_split or not root or not os.path.isdir(root) or os.path.isdir(os.path.join(root, "val")):
        return val_split
    return 0.1


def splits(root: str, val_split: float | None) -> tuple[str, ...]:
    """The splits of DATA that hold images: train and val, or train alone with --val-split."""
    if not os.path.isdir(root):
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        raise ConfigError(f"data dir {root} {what}; {FIX_ROOT}")
    if is_class_root(root):
        if not find_class_dirs(root):
            raise ConfigError(f"{root} has no class folders and no train/ folder; {FIX_ROOT} (one sub-folder "
                              "per class in each), or class folders at the root with --val-split 0.1")
        if not val_split:
            raise ConfigError(f"{root} holds class folders but no train/ and val/; pass --val-split 0.1 to hold "
                              "out 10% of each class for validation")
        return ("train",)
    if not os.path.isdir(os.path.join(root, "train")):
        raise ConfigError(f"{root} has val/ but no train/ folder; {FIX_ROOT} (one sub-folder per class in each)")
    has_val = os.path.isdir(os.path.join(root, "val"))
    if has_val and val_split:
        raise ConfigError(f"--val-split {val_split} given but {root} has a val/ folder; drop --val-split "
                          "to validate on val/, or point --data at a root with train/ alone")
    if not has_val and not val_split:
        raise ConfigError(f"{root} has train/ but no val/; pass --val-split 0.1 to hold out 10% of train/ "
                          "for validation, or add val/ (one sub-folder per class)")
    return ("train", "val") if has_val else ("train",)


def split_classes(root: str, val_split: float | None = None) -> dict[str, list[str]]:
    """{split: class names} from directory names alone; ConfigError when the splits disagree."""
    classes = {}
    for split in splits(root, val_split):
        folder = split_dir(root, split)
        classes[split] = find_class_dirs(folder)
        if not classes[split]:
            raise ConfigError(f"{folder} has no class folders; put each class's images in {folder}/CLASS/")
    if "val" in classes and classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise ConfigError(
            f"train/ and val/ have different classes (only in train: {', '.join(only_train) or '-'}; "
            f"only in val: {', '.join(only_val) or '-'}); give both splits the same class folders")
    return classes


def empty_class(class_dir: str) -> ConfigError:
    return ConfigError(f"class folder {class_dir} is empty (no {'/'.join(IMG_EXTENSIONS)} files); "
                       "add images or remove the folder")


def walk_images(class_dir: str):
    """Image paths under a class folder in torchvision's make_dataset order (sorted walk, following links),
    hidden sub-folders pruned."""
    for folder, _, names in sorted(os.walk(class_dir, followlinks=True)):
        if any(is_hidden(part) for part in os.path.relpath(folder, class_dir).split(os.sep) if part != "."):
            continue
        for name in sorted(names):
            if is_image_file(name):
                yield os.path.join(folder, name)


def check_dataset(root: str, val_split: float | None = None) -> list[str]:
    """The class names of an ImageFolder root; ConfigError saying how to fix it otherwise."""
    classes = split_classes(root, val_split)
    for split, names in classes.items():
        for name in names:
            class_dir = os.path.join(split_dir(root, split), name)
            if next(walk_images(class_dir), None) is None:
                raise empty_class(class_dir)
    return classes["train"]


def count_images(split_dir: str, stop_at: int | None = None) -> int:
    """Image files under split_dir's class folders, counting no further than stop_at (a few directory
    reads on a large tree when only "is there enough for one batch?" is asked)."""
    total = 0
    for name in find_class_dirs(split_dir):
        for _ in walk_images(os.path.join(split_dir, name)):
            total += 1
            if stop_at is not None and total >= stop_at:
                return total
    return total
