"""What feeds a rank: the data formats, each behind one entry of FORMATS.

    fmt = format_of(cfg)                               # "folder" | "shards" | "synthetic", torch-free
    classes = FORMATS[fmt].check(cfg, build=True)      # the launcher: torch-free; ConfigError with the fix
    train, val, classes = open_datasets(cfg, rank)        # a rank (torch)

folder: an ImageFolder root, read through its memory-mapped index (index.py); shards: WebDataset tar
shards from `distrain pack` (shards.py, pack.py); synthetic: random images. Loaders, samplers and batches
are in loaders.py, decoding in images.py (workers) and device_decode.py (--decode device).

This package imports no torch itself: `from distrib.data import build_loaders` loads loaders.py (and torch)
only when that name is first used.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, NamedTuple


class Format(NamedTuple):
    check: Callable   # (cfg, build: bool) -> class names; torch-free; build=False writes nothing (dry runs)
    datasets: str     # "module:function", (cfg, rank) -> (train, val, classes); imported by ranks only


def _folder_check(cfg, build: bool) -> list[str]:
    from distrib.data import index, layout

    return index.ensure(cfg.data, cfg.val_split).classes if build else layout.check_dataset(cfg.data, cfg.val_split)


def _shards_check(cfg, build: bool) -> list[str]:
    from distrib.data import shards

    return shards.check(cfg.data, cfg.val_split)


SYNTHETIC_CLASSES = [f"class{i}" for i in range(10)]


def _synthetic_check(cfg, build: bool) -> list[str]:
    return list(SYNTHETIC_CLASSES)


FORMATS = {
    "folder": Format(_folder_check, "distrib.data.folder:datasets"),
    "shards": Format(_shards_check, "distrib.data.shards:datasets"),
    "synthetic": Format(_synthetic_check, "distrib.data.folder:synthetic_datasets"),
}


def format_of(cfg) -> str:
    if cfg.synthetic:
        return "synthetic"
    from distrib.data.shards import MANIFEST

    return "shards" if cfg.data and os.path.isfile(os.path.join(cfg.data, MANIFEST)) else "folder"


def check(cfg, build: bool = True) -> list[str]:
    return FORMATS[format_of(cfg)].check(cfg, build)


def open_datasets(cfg, rank: int):
    module, _, name = FORMATS[format_of(cfg)].datasets.partition(":")
    return getattr(importlib.import_module(module), name)(cfg, rank)


_LAZY = {"distrib.data.loaders": ("Loaders", "TrainSampler", "ValSampler", "Collate", "build_loaders",
                                  "build_val_loader", "val_loader", "to_device"),
         "distrib.data.datasets": ("Batch", "Skipped", "ImageDataset", "SyntheticDataset", "sample_rng",
                                   "PREFETCH_FACTOR"),
         "distrib.data.layout": ("check_dataset", "IMG_EXTENSIONS"),
         "distrib.data.folder": ("FolderDataset",)}


def __getattr__(name: str):  # PEP 562: the old `from distrib.data import X` names, imported on first use
    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module 'distrib.data' has no attribute {name!r}")
