"""The datasets every data format builds on, and the item types both decode paths share.

An ImageDataset reads sample i from a *source*: anything with `labels` (an int array), `name(i)` (for
messages) and `open(i)` (a path, or the image's bytes). The folder format's source is the memory-mapped
index (distrib/data/index.py), the shards format's is the tar offsets (distrib/data/shards.py); decoding,
augmentation and the handling of bad files are the same for both, so a run on shards and a run on the
folder they were packed from see the same pixels for the same sample.

The augmentation of sample i depends only on (seed, epoch, rank, i) (`sample_rng`), never on which
worker ran it. distrib/data/loaders.py (worker decode) and distrib/data/device_decode.py (device decode)
both import this module and neither imports the other.
"""

from __future__ import annotations

import os
import random
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from distrib.data import index
from distrib.data.folder import FolderSource
from distrib.data.images import load_train, load_val, skip_reason
from distrib.data.layout import (
    SYNTHETIC_CLASSES,  # noqa: F401 (re-exported for the synthetic datasets)
    walk_images,
)
from distrib.data.shards import ShardSource, read_manifest
from distrib.preprocess import Preprocessing

SYNTHETIC_TRAIN, SYNTHETIC_VAL = 2560, 512
PREFETCH_FACTOR = 4  # batches in flight per worker: rides out slow files and filesystem hiccups


class Batch(NamedTuple):
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N
    skipped: list[str]    # "PATH: reason" for each unreadable file dropped from this batch


class Skipped(NamedTuple):
    """What a dataset returns instead of (image, label) for a file it could not decode."""
    reason: str


def sample_rng(seed: int, epoch: int, rank: int, index: int) -> random.Random:
    # A fresh generator per sample, keyed by a stable mix (no hash(): it is only stable for ints
    # by accident), so worker count and worker start order cannot change the augmentation.
    return random.Random(f"{seed}/{epoch}/{rank}/{index}")


class ImageDataset(Dataset):
    """One split of a source (optionally the subset `positions` of it, for --val-split); item =
    (3 x H x W uint8 tensor, label) or Skipped."""

    def __init__(self, source, image_size: int, train: bool, seed: int = 0, rank: int = 0,
                 val_resize: int | None = None, positions: np.ndarray | None = None, augment=None):
        self.source, self.positions = source, positions
        self.image_size, self.train, self.seed, self.rank = image_size, train, seed, rank
        self.val_resize = val_resize  # shorter side before the centre crop (validation only)
        self.augment = augment  # recipe.augment.Augment or None (training only)

    def __len__(self) -> int:
        return len(self.source.labels) if self.positions is None else len(self.positions)

    def at(self, index: int) -> int:
        """The source's sample number of item `index`."""
        return index if self.positions is None else int(self.positions[index])

    def label(self, index: int) -> int:
        return int(self.source.labels[self.at(index)])

    def read(self, index: int):
        """(name for messages, path or bytes) of item `index`."""
        i = self.at(index)
        return self.source.name(i), self.source.open(i)

    def __getitem__(self, key: int | tuple[int, int]):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        name, src = self.read(index)
        try:
            if self.train:
                image = load_train(src, self.image_size, sample_rng(self.seed, epoch, self.rank, index),
                                   self.augment)
            else:
                image = load_val(src, self.image_size, self.val_resize)
        except Exception as e:  # PIL raises many types for broken files; one bad file must not end a run
            return Skipped(f"{name}: {skip_reason(src, e)}")
        return image, self.label(index)


def split_datasets(cfg, rank: int, classes: list[str], sources: dict) -> tuple[ImageDataset, ImageDataset]:
    """Train and val datasets of a format's {split: source}; with --val-split, both from train's source."""
    from distrib.data.index import holdout
    from distrib.preprocess import Preprocessing
    from distrib.recipe.augment import Augment

    seed, pre = cfg.seed or 0, Preprocessing.from_config(cfg)
    train_pos = val_pos = None
    val_source = sources.get("val")
    if cfg.val_split:
        val_source = sources["train"]
        train_pos, val_pos = holdout(np.asarray(sources["train"].labels), cfg.val_split, seed)
    train = ImageDataset(sources["train"], cfg.image_size, True, seed, rank, positions=train_pos,
                         augment=Augment.from_config(cfg))
    val = ImageDataset(val_source, pre.crop_size, False, seed, rank, val_resize=pre.resize_size, positions=val_pos)
    return train, val


class SyntheticDataset(Dataset):
    """Random uint8 images made from (seed, split, index) alone: no disk, same item format."""

    def __init__(self, length: int, image_size: int, split: int, seed: int = 0):
        self.length, self.image_size, self.split, self.seed = length, image_size, split, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]):
        index = key[0] if isinstance(key, tuple) else key
        rng = np.random.default_rng([self.seed, self.split, index])
        image = rng.integers(0, 256, (3, self.image_size, self.image_size), dtype=np.uint8)
        return torch.from_numpy(image), index % len(SYNTHETIC_CLASSES)


# ---------------------------------------------------------------- the formats' datasets (FORMATS)

def folder_datasets(cfg, rank: int):
    """Train and val from the index: a rank lists no directory when the index is fresh (one is built,
    under a lock, when it is not)."""
    idx = index.ensure(cfg.data, cfg.val_split)
    sources = {split: FolderSource(idx.split(split)) for split in idx.splits}
    return (*split_datasets(cfg, rank, idx.classes, sources), idx.classes)


def synthetic_datasets(cfg, rank: int):
    seed = cfg.seed or 0
    return (SyntheticDataset(SYNTHETIC_TRAIN, cfg.image_size, split=0, seed=seed),
            SyntheticDataset(SYNTHETIC_VAL, Preprocessing.from_config(cfg).crop_size, split=1, seed=seed),
            list(SYNTHETIC_CLASSES))


def shard_datasets(cfg, rank: int):
    """Train and val from `distrain pack` shards."""
    classes = read_manifest(cfg.data)["classes"]
    sources = {split: ShardSource(cfg.data, split) for split in read_manifest(cfg.data)["splits"]}
    return (*split_datasets(cfg, rank, classes, sources), classes)


class ListSource:
    """Paths and labels held in memory: for a dataset made from one split folder without an index."""

    def __init__(self, paths: list[str], labels: list[int]):
        self.paths, self.labels = paths, np.asarray(labels, dtype=np.int32)

    def name(self, i: int) -> str:
        return self.paths[i]

    open = name


def FolderDataset(split_dir: str, class_to_idx: dict[str, int], image_size: int, train: bool, seed: int = 0,
                  rank: int = 0, val_resize: int | None = None) -> ImageDataset:
    """One split folder as an ImageDataset, listed here (tests, tools); runs read the index instead."""
    pairs = [(p, label) for name, label in sorted(class_to_idx.items())
             for p in walk_images(os.path.join(split_dir, name))]
    source = ListSource([p for p, _ in pairs], [label for _, label in pairs])
    return ImageDataset(source, image_size, train, seed, rank, val_resize=val_resize)
