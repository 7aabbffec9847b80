"""`distrain pack DATA OUT`: an ImageFolder root as WebDataset tar shards plus an offsets index
(the format is described in distrib/data/shards.py). Torch-free.

Resumable: the shards are planned from the folder's index and the file sizes (the same plan every time),
and each shard is written to NAME.tmp, its member offsets saved, then renamed into place. Run again
after an interruption, pack keeps every finished shard and writes the others; shards.json, written last,
is what marks OUT as a dataset. Shards are written by P processes (--procs), one shard per task.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tarfile
from multiprocessing import get_context

import numpy as np

from distrib.config import ConfigError
from distrib.data import index, layout
from distrib.data.shards import ARRAYS, INDEX, MANIFEST, image_ext, member_key
from distrib.files import read_json, write_atomic

DEFAULT_SHARD_BYTES = 1 << 30


def parse_size(text: str) -> int:
    """'1GB', '500MB', '64KiB' or a byte count."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = (s[:-1], s[-1]) if s and s[-1] in units else (s, "")
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        raise ConfigError(f"--shard-size {text!r} is not a size; use e.g. 1GB, 500MB or 64KB") from None
    if value < 1:
        raise ConfigError(f"--shard-size {text!r} must be positive")
    return value


def plan(sizes: np.ndarray, shard_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) sample ranges, each at most shard_bytes of image data (and at least one sample)."""
    ranges, start, total = [], 0, 0
    for i, size in enumerate(sizes.tolist()):
        if i > start and total + size > shard_bytes:
            ranges.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges


def _shard_name(split: str, number: int) -> str:
    return f"{split}-{number:06d}.tar"


def _write_shard(job) -> int:
    """Write one shard (in a pool process); returns its sample count."""
    import webdataset

    source, folder, name, start, stop = job
    final, tmp = os.path.join(folder, name), os.path.join(folder, name + ".tmp")
    writer = None
    try:
        with open(tmp, "wb") as f:
            writer = webdataset.TarWriter(f)
            for i in range(start, stop):
                path = source.path(i)
                with open(path, "rb") as image:
                    writer.write({"__key__": member_key(i), image_ext(path): image.read(),
                                  "cls": int(source.labels[i])})
            writer.close()
    except OSError as e:  # a full disk: named by its shard (pack() removes the unfinished .tmp files)
        if writer is not None:
            writer.tarstream.fileobj.closed = True  # its buffer is dropped, not written into the closed file at exit
        raise OSError(e.errno, e.strerror, e.filename or tmp) from None
    # TarWriter does not report where it put each member; the tar headers do.
    with tarfile.open(tmp) as tar:
        where = {m.name: (m.offset_data, m.size) for m in tar}
    offsets = np.array([where[f"{member_key(i)}.{image_ext(source.path(i))}"] for i in range(start, stop)],
                       dtype=np.int64).reshape(-1, 2)
    np.save(os.path.join(folder, f".{name}.offsets.npy"), offsets)
    os.replace(tmp, final)
    return stop - start


def _forget_other_plan(folder: str, ranges: list[tuple[int, int]]) -> None:
    """Finished shards count only for the plan they were written for (DATA or --shard-size may have changed)."""
    os.makedirs(folder, exist_ok=True)
    plan_file, want = os.path.join(folder, ".plan.json"), [list(r) for r in ranges]
    if read_json(plan_file) != want:
        for name in os.listdir(folder):
            if name.endswith(".offsets.npy"):
                os.remove(os.path.join(folder, name))
        with open(plan_file, "w") as f:
            json.dump(want, f)


def _done(folder: str, name: str) -> bool:
    return os.path.isfile(os.path.join(folder, name)) and os.path.isfile(os.path.join(folder, f".{name}.offsets.npy"))


def pack(root: str, out: str, shard_bytes: int = DEFAULT_SHARD_BYTES, procs: int = 1,
         progress=lambda done, total: None) -> dict:
    """Write OUT from DATA; progress(samples done, samples total) after each shard. Returns the manifest."""
    if os.path.realpath(out) == os.path.realpath(root):
        raise ConfigError("pack OUT must be another folder than DATA; give a new folder")
    idx = index.ensure(root, layout.tool_val_split(root, None))  # train alone is fine: --val-split comes later
    jobs, layouts = [], {}
    for split in idx.splits:
        source = idx.split(split)
        sizes = np.array([os.path.getsize(source.path(i)) for i in range(len(source))], dtype=np.int64)
        layouts[split] = (source, plan(sizes, shard_bytes))
        folder = os.path.join(out, split)
        _forget_other_plan(folder, layouts[split][1])
        for number, (start, stop) in enumerate(layouts[split][1]):
            if not _done(folder, _shard_name(split, number)):
                jobs.append((source, folder, _shard_name(split, number), start, stop))
    total = sum(len(s) for s, _ in layouts.values())
    done = total - sum(stop - start for *_, start, stop in jobs)
    progress(done, total)
    shards, left = sum(len(ranges) for _, ranges in layouts.values()), len(jobs)
    try:
        with get_context("forkserver").Pool(max(1, procs)) as pool:
            for count in pool.imap_unordered(_write_shard, jobs):
                done, left = done + count, left - 1
                progress(done, total)
        return _finish(out, idx.classes, layouts)
    except OSError as e:  # a full disk, a quota, a lost mount: what is finished stays, the same command resumes
        for split in layouts:  # shards the pool had begun when it was stopped: they hold space, and count for nothing
            for name in glob.glob(os.path.join(glob.escape(os.path.join(out, split)), "*.tar.tmp")):
                with contextlib.suppress(OSError):
                    os.remove(name)
        free = shutil.disk_usage(out).free / 2**20
        raise ConfigError(f"pack stopped at {e.filename or out}: {e.strerror or e} ({free:.1f} MiB free there); "
                          f"{shards - left} of {shards} shards are finished and kept: once that is fixed, the same "
                          f"command writes the other {left}") from None


def _finish(out: str, classes: list[str], layouts: dict) -> dict:
    os.makedirs(os.path.join(out, INDEX), exist_ok=True)
    manifest = {"format": "webdataset", "version": 1, "classes": classes, "splits": {}}
    for split, (source, ranges) in layouts.items():
        folder = os.path.join(out, split)
        names = [_shard_name(split, n) for n in range(len(ranges))]
        offsets = np.concatenate([np.load(os.path.join(folder, f".{n}.offsets.npy")) for n in names])
        arrays = dict(zip(ARRAYS, (np.asarray(source.labels), np.asarray(source.ends), np.asarray(source.blob),
                                   offsets[:, 0].copy(), offsets[:, 1].copy())))
        for kind, array in arrays.items():
            np.save(os.path.join(out, INDEX, f"{split}.{kind}.npy"), array)
        shards = [{"name": n, "start": start, "count": stop - start, "bytes": os.path.getsize(os.path.join(folder, n))}
                  for n, (start, stop) in zip(names, ranges)]
        manifest["splits"][split] = {"count": len(source), "shards": shards}
        wids = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split,
                "shardlist": [{"url": f"{split}/{s['name']}", "nsamples": s["count"]} for s in shards]}
        with open(os.path.join(out, f"{split}.wids.json"), "w") as f:
            json.dump(wids, f, indent=1)
    write_atomic(os.path.join(out, MANIFEST), manifest, as_json=True, indent=1, hidden=True)
    return manifest
