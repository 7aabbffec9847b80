"""The sample index of an ImageFolder root: listed once per run, memory-mapped by every rank and worker.

    idx = ensure(root)                   # load it, or build it (one process builds, the others wait)
    train = idx.split("train")           # SplitIndex: len(train), train.path(i), train.labels[i]

Listing 1.28 M files costs seconds on a local disk and minutes on Lustre/GPFS/NFS, where 64 nodes x 8
ranks each listing the tree is a metadata storm (pytorch/vision#617, #9659). So the listing is done once:
by the launcher before torchrun starts, or, when ranks start without it (sbatch), by whichever process
takes the index's file lock first while the others wait on it. It is reused by restarts, requeues and
later runs. `distrain index DATA` builds it ahead of time.

Stored as .npy arrays plus one bytes blob of paths, memory-mapped read-only: no per-sample Python objects
(a list of 1 M str is copied page by page into every forked worker as refcounts change, pytorch#13246),
and a SplitIndex pickles as its file names, so DataLoader workers map the same pages instead of
receiving a copy.

Where: DATA/.distrain-index/ when DATA is writable (hidden: never taken for a class), otherwise
$DISTRAIN_CACHE/index/<hash of DATA's real path>/, with DISTRAIN_CACHE defaulting to
$XDG_CACHE_HOME/distrain (~/.cache/distrain). Setting DISTRAIN_CACHE puts every index there.

Invalidation: the index records the mtime of each split folder and each class folder. Adding, removing or
renaming a file in a class folder, or a class folder in a split, changes one of them, so checking the
index is ~1,000 stat() calls and no directory listing. Not seen: a file rewritten in place (same name)
and changes inside nested sub-folders of a class folder; `distrain index DATA --rebuild` covers those.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import time
import uuid
from contextlib import contextmanager

import numpy as np

from distrib.config import ConfigError
from distrib.data import layout
from distrib.files import atomic_file, read_json, write_atomic

VERSION = 1
INDEX_DIR = layout.INDEX_FOLDER
META = "meta.json"
BUILDS_LOG = "builds.log"  # one line per build: who built it and how long it took


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("DISTRAIN_CACHE") or os.path.join(base, "distrain")


def _writable(folder: str) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def location(root: str) -> str:
    """The index folder of DATA: beside it if writable, else in the cache (always there with DISTRAIN_CACHE)."""
    beside = os.path.join(root, INDEX_DIR)
    if not os.environ.get("DISTRAIN_CACHE") and (os.path.isdir(beside) or _writable(root)):
        return beside
    key = hashlib.sha1(os.path.realpath(root).encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "index", key)


class SplitIndex:
    """One split's samples: labels[i] (int32), path(i) (absolute), all memory-mapped."""

    def __init__(self, split_dir: str, labels: str, ends: str, blob: str):
        self.split_dir, self.files = split_dir, (labels, ends, blob)
        self.labels = np.load(labels, mmap_mode="r")
        self.ends = np.load(ends, mmap_mode="r")
        self.blob = np.load(blob, mmap_mode="r")

    def __reduce__(self):  # workers re-map the files: nothing is copied through the pickle
        return SplitIndex, (self.split_dir, *self.files)

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        start = int(self.ends[i - 1]) if i > 0 else 0
        return os.path.join(self.split_dir, os.fsdecode(self.blob[start:int(self.ends[i])].tobytes()))


class Index:
    def __init__(self, root: str, folder: str, meta: dict):
        self.root, self.folder, self.meta = root, folder, meta
        self.classes: list[str] = meta["classes"]

    @property
    def splits(self) -> list[str]:
        return list(self.meta["splits"])

    def split(self, name: str) -> SplitIndex:
        files = [os.path.join(self.folder, f) for f in self.meta["splits"][name]["files"]]
        return SplitIndex(layout.split_dir(self.root, name), *files)


# ---------------------------------------------------------------- freshness

def _stamp(root: str, split: str, classes: list[str]) -> list[int]:
    split_dir = layout.split_dir(root, split)
    return [os.stat(split_dir).st_mtime_ns] + [os.stat(os.path.join(split_dir, c)).st_mtime_ns for c in classes]


def _fresh(root: str, meta: dict, splits: tuple[str, ...]) -> bool:
    if meta.get("version") != VERSION or tuple(meta["splits"]) != splits:
        return False
    try:
        return all(_stamp(root, s, meta["classes"]) == meta["splits"][s]["stamp"] for s in splits)
    except OSError:  # a class folder is gone
        return False


def _read_meta(folder: str) -> dict | None:
    return read_json(os.path.join(folder, META))


def load(root: str, val_split: float | None = None) -> Index | None:
    """The index of DATA if it exists and the tree has not changed since; None otherwise. Lists nothing."""
    folder = location(root)
    meta = _read_meta(folder)
    if meta is None or not _fresh(root, meta, layout.splits(root, val_split)):
        return None
    return Index(root, folder, meta)


# ---------------------------------------------------------------- building

@contextmanager
def _locked(folder: str):
    made = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    try:
        with open(os.path.join(folder, "lock"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if this process dies
            yield
    except BaseException:
        if made and os.listdir(folder) == ["lock"]:  # a refused dataset keeps no trace of us in DATA
            os.remove(os.path.join(folder, "lock"))
            os.rmdir(folder)
        raise


def ensure(root: str, val_split: float | None = None, rebuild: bool = False) -> Index:
    """Load the index of DATA, building it first if it is missing or stale: one process builds, others wait."""
    if not rebuild and (idx := load(root, val_split)) is not None:
        return idx
    folder = location(root)
    try:
        with _locked(folder):
            if not rebuild and (idx := load(root, val_split)) is not None:  # built while we waited
                return idx
            return _build(root, folder, val_split)
    except PermissionError:
        raise ConfigError(f"cannot write the sample index to {folder}; set DISTRAIN_CACHE to a writable "
                          "folder") from None


def _list_split(root: str, split: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    split_dir = layout.split_dir(root, split)
    names, labels = [], []
    for label, name in enumerate(classes):
        before = len(names)
        class_dir = os.path.join(split_dir, name)
        names += [os.fsencode(os.path.relpath(p, split_dir)) for p in layout.walk_images(class_dir)]
        if len(names) == before:
            raise layout.empty_class(class_dir)
        labels += [label] * (len(names) - before)
    ends = np.cumsum([len(n) for n in names], dtype=np.int64)
    return (np.asarray(labels, dtype=np.int32), ends, np.frombuffer(b"".join(names), dtype=np.uint8))


def _save(folder: str, name: str, array: np.ndarray) -> None:
    with atomic_file(os.path.join(folder, name), "wb", hidden=True) as f:
        np.save(f, array)


def _build(root: str, folder: str, val_split: float | None) -> Index:
    start = time.time()
    classes = layout.split_classes(root, val_split)["train"]
    splits = layout.splits(root, val_split)
    build, meta = uuid.uuid4().hex[:8], {"version": VERSION, "root": os.path.realpath(root), "classes": classes,
                                         "splits": {}}
    for split in splits:
        stamp = _stamp(root, split, classes)  # before listing: a change during the listing makes it stale
        arrays = _list_split(root, split, classes)
        files = [f"{split}-{build}.{kind}.npy" for kind in ("labels", "ends", "paths")]
        for name, array in zip(files, arrays):
            _save(folder, name, array)
        meta["splits"][split] = {"stamp": stamp, "files": files, "count": len(arrays[0])}
    old = _read_meta(folder)
    write_atomic(os.path.join(folder, META), meta, as_json=True, hidden=True)  # readers: old index or new, never half
    if old:  # processes that mapped the old files keep them (unlinked inodes live while mapped)
        for split in old.get("splits", {}).values():
            for name in split["files"]:
                _remove(os.path.join(folder, name))
    counts = " ".join(f"{s}={m['count']}" for s, m in meta["splits"].items())
    with open(os.path.join(folder, BUILDS_LOG), "a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {socket.gethostname()} pid={os.getpid()} "
                f"{time.time() - start:.2f}s {counts}\n")
    return Index(root, folder, meta)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def builds(root: str) -> list[str]:
    """The lines of the index's build log (tests count them)."""
    try:
        with open(os.path.join(location(root), BUILDS_LOG)) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """--val-split: (train, val) positions in a train/-only split, stratified: round(fraction x n) of each
    class's n images (at least 1 when n >= 2) go to val, drawn by `seed`. A pure function of the labels
    and the seed, so every rank, every restart and every later run gets the same split."""
    rng = np.random.default_rng(seed)
    val = []
    for label in range(int(labels.max()) + 1 if len(labels) else 0):
        members = np.flatnonzero(labels == label)
        take = min(max(round(fraction * len(members)), 1), len(members) - 1) if len(members) >= 2 else 0
        val.append(rng.permutation(members)[:take])
    val = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    return np.setdiff1d(np.arange(len(labels)), val), val
