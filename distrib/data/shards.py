"""The shards format: WebDataset tar shards with an index of member offsets, so any sample is one pread.

    OUT/shards.json                      classes, and per split its shards: name, first sample, count, bytes
    OUT/train/train-000000.tar ...       KEY.jpg (or .png, ...: the original bytes) + KEY.cls, KEY = %08d sample
    OUT/train.wids.json                  the same shard list in wids' shard-index format, for other tools
    OUT/.index/train.*.npy               per sample: label, original path, data offset and size in its shard

Written by `distrain pack` (distrib/data/pack.py). Sample i of a split is sample i of the folder's index
(distrib/data/index.py), so DistributedSampler's order, sample_rng(seed, epoch, rank, i), --val-split and
validation sharding give the same batches as on the folder, and a run logs the same metrics.

Why our own offsets index rather than reading through webdataset or wids: webdataset streams a shard
front to back, which cannot follow DistributedSampler's global permutation (nor resume mid-epoch at
batch k exactly); wids does random access but builds its member index by scanning every tar header when it
opens a shard, in every worker. The offsets here are computed once at pack time and memory-mapped like the
folder index. The tars themselves are plain WebDataset shards, written by webdataset's TarWriter and
readable by `webdataset.WebDataset` and by `tar`.
"""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np

from distrib.config import ConfigError

MANIFEST = "shards.json"
INDEX = ".index"
ARRAYS = ("labels", "ends", "paths", "offset", "size")


def is_shards(root: str | None) -> bool:
    return bool(root) and os.path.isfile(os.path.join(root, MANIFEST))


def read_manifest(root: str) -> dict:
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{root}/{MANIFEST} cannot be read ({e}); pack the data again with "
                          f"`distrain pack DATA {root}`") from None


class ShardSource:
    """One split of a packed dataset: labels, name(i) and open(i) (the member's bytes), memory-mapped."""

    def __init__(self, root: str, split: str):
        self.root, self.split = root, split
        meta = read_manifest(root)["splits"][split]
        self.shards = [os.path.join(root, split, s["name"]) for s in meta["shards"]]
        self.starts = np.array([s["start"] for s in meta["shards"]], dtype=np.int64)
        for kind in ARRAYS:
            setattr(self, kind, np.load(os.path.join(root, INDEX, f"{split}.{kind}.npy"), mmap_mode="r"))
        self._fds: dict[int, int] = {}

    def __reduce__(self):  # workers re-map the arrays and open their own file descriptors
        return ShardSource, (self.root, self.split)

    def shard_of(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right")) - 1

    def original(self, i: int) -> str:
        start = int(self.ends[i - 1]) if i > 0 else 0
        return os.fsdecode(self.paths[start:int(self.ends[i])].tobytes())

    def name(self, i: int) -> str:
        return f"{self.shards[self.shard_of(i)]}:{member_key(i)} ({self.original(i)})"

    def open(self, i: int) -> bytes:
        n = self.shard_of(i)
        if n not in self._fds:
            self._fds[n] = os.open(self.shards[n], os.O_RDONLY)
        return os.pread(self._fds[n], int(self.size[i]), int(self.offset[i]))


def member_key(i: int) -> str:
    return f"{i:08d}"


def image_ext(original: str) -> str:
    return os.path.splitext(original)[1].lstrip(".").lower()


# ---------------------------------------------------------------- checks

def check(root: str, val_split: float | None) -> list[str]:
    """Torch-free, stat() only: the manifest, its splits, and every shard present at its recorded size."""
    manifest = read_manifest(root)
    splits = manifest["splits"]
    if "val" in splits and val_split:
        raise ConfigError(f"--val-split {val_split} given but {root} has a val split; drop --val-split")
    if "val" not in splits and not val_split:
        raise ConfigError(f"{root} has a train split but no val; pass --val-split 0.1 to hold out 10% of train "
                          "for validation, or pack a DATA with val/")
    for split, meta in splits.items():
        for shard in meta["shards"]:
            path = os.path.join(root, split, shard["name"])
            size = os.path.getsize(path) if os.path.isfile(path) else None
            if size != shard["bytes"]:
                what = "is missing" if size is None else f"has {size} bytes, {shard['bytes']} expected"
                raise ConfigError(f"shard {path} {what}; pack again with `distrain pack DATA {root}` "
                                  "(it rewrites only what is missing or wrong)")
    return manifest["classes"]


def verify_shard(root: str, split: str, number: int) -> list[str]:
    """Problems of one shard: its tar members against the offsets index (`distrain check`)."""
    source = ShardSource(root, split)
    path = source.shards[number]
    first = int(source.starts[number])
    last = int(source.starts[number + 1]) if number + 1 < len(source.starts) else len(source.labels)
    file_size = os.path.getsize(path)
    recorded = read_manifest(root)["splits"][split]["shards"][number]["bytes"]
    problems = [] if file_size == recorded else [f"{path}: {file_size} bytes, {recorded} when packed"]
    members = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                members[m.name] = (m.offset_data, m.size)
    except (OSError, tarfile.TarError) as e:
        return problems + [f"{path}: not a readable tar ({e}); pack again"]
    for i in range(first, last):
        name = f"{member_key(i)}.{image_ext(source.original(i))}"
        want = (int(source.offset[i]), int(source.size[i]))
        if members.get(name) != want:
            problems.append(f"{path}: member {name} is {members.get(name, 'missing')}, index says {want}")
        elif want[0] + want[1] > file_size:
            problems.append(f"{path}: member {name} runs past the end of the file (truncated shard)")
        if f"{member_key(i)}.cls" not in members:
            problems.append(f"{path}: member {member_key(i)}.cls is missing")
    return problems
