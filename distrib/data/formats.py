"""The data formats, each one entry of FORMATS (a Format knows how to check and open itself).

    fmt = format_of(cfg)                               # "folder" | "shards" | "synthetic", torch-free
    classes = FORMATS[fmt].check(cfg, build=True)      # the launcher: torch-free; ConfigError with the fix
    train, val, classes = open_datasets(cfg, rank)     # a rank (torch)

Torch-free: a format's datasets are imported by name, by ranks only.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, NamedTuple

from distrib.data.layout import SYNTHETIC_CLASSES


class Format(NamedTuple):
    check: Callable   # (cfg, build: bool) -> class names; torch-free; build=False writes nothing (dry runs)
    datasets: str     # "module:function", (cfg, rank) -> (train, val, classes); imported by ranks only


def _folder_check(cfg, build: bool) -> list[str]:
    from distrib.data import index, layout

    return index.ensure(cfg.data, cfg.val_split).classes if build else layout.check_dataset(cfg.data, cfg.val_split)


def _shards_check(cfg, build: bool) -> list[str]:
    from distrib.data import shards

    return shards.check(cfg.data, cfg.val_split)




def _synthetic_check(cfg, build: bool) -> list[str]:
    return list(SYNTHETIC_CLASSES)


FORMATS = {
    "folder": Format(_folder_check, "distrib.data.datasets:folder_datasets"),
    "shards": Format(_shards_check, "distrib.data.datasets:shard_datasets"),
    "synthetic": Format(_synthetic_check, "distrib.data.datasets:synthetic_datasets"),
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
