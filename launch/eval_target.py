"""What `distrain eval` scores, decided before anything starts and said in one line.

    the checkpoint's own data, trained with --val-split   the same held-out images training validated on
    any data with a val/ folder (or packed val shards)     its val split
    class folders at the root, or train/ alone             every image of them (a labelled test set)

The last case is read through a view: a scratch folder whose train/ and val/ are links to the class
folders, so the ranks validate on all of them with the ordinary loaders. Torch-free.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from distrib.config import ConfigError, RunConfig
from distrib.data import formats, layout


@dataclass(frozen=True)
class Target:
    data: str                 # the root the ranks read
    val_split: float | None   # the held-out fraction (the checkpoint's own data only)
    says: str                 # what is scored, for people


def _same_folder(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def choose(data: str, trained: dict, scratch: str) -> Target:
    """The target for --data DATA and the checkpoint's recorded config `trained`; `scratch` is a folder
    that lives as long as the evaluation (for the view)."""
    split = trained.get("val_split")
    if split and _same_folder(data, trained.get("data")):
        return Target(data, split, f"the images of {data} held out by --val-split {split:g} "
                                   f"(seed {trained.get('seed') or 0}), as in training")
    if formats.format_of(RunConfig(data=data)) == "shards":
        from distrib.data.shards import read_manifest

        if "val" in read_manifest(data)["splits"]:
            return Target(data, None, f"the val shards of {data}")
        if split:  # packed from the data it trained on: the same held-out images
            return Target(data, split, f"the images of {data} held out by --val-split {split:g} "
                                       f"(seed {trained.get('seed') or 0}), as in training")
        raise ConfigError(f"{data} holds train shards only; evaluate the folder it was packed from, or "
                          "pack a dataset with val/")
    if not os.path.isdir(data):
        layout.splits(data, None)  # raises the one line for a missing folder
    if os.path.isdir(os.path.join(data, "val")):
        return Target(data, None, f"{os.path.join(data, 'val')}")
    folder = layout.split_dir(data, "train")
    if not layout.find_class_dirs(folder):
        layout.splits(data, 0.1)  # no class folders at all: raises its one line
    view = os.path.join(scratch, "data")
    os.makedirs(view, exist_ok=True)
    for name in ("train", "val"):
        os.symlink(os.path.abspath(folder), os.path.join(view, name))
    return Target(view, None, f"every image of {folder} (it has no val/ folder)")
