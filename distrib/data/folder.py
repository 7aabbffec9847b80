"""The folder and synthetic formats' datasets (the ranks' side of FORMATS in distrib/data/__init__.py)."""

from __future__ import annotations

import os

import numpy as np

from distrib.data import index
from distrib.data.datasets import (SYNTHETIC_CLASSES, SYNTHETIC_TRAIN, SYNTHETIC_VAL, ImageDataset,
                                   SyntheticDataset, split_datasets)
from distrib.data.layout import walk_images
from distrib.preprocess import Preprocessing


class FolderSource:
    """A SplitIndex as an ImageDataset source: the file's path is both its name and what is opened."""

    def __init__(self, split: index.SplitIndex):
        self.split, self.labels = split, split.labels

    def __reduce__(self):  # the SplitIndex re-maps its files in the worker: no copy of the labels
        return FolderSource, (self.split,)

    def name(self, i: int) -> str:
        return self.split.path(i)

    open = name


def datasets(cfg, rank: int):
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
