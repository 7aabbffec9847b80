"""The folder and synthetic formats' datasets (the ranks' side of FORMATS in distrib/data/__init__.py)."""

from __future__ import annotations

from distrib.data import index
from distrib.data.datasets import (SYNTHETIC_CLASSES, SYNTHETIC_TRAIN, SYNTHETIC_VAL, SyntheticDataset,
                                   split_datasets)
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
