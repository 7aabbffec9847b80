"""`distrain check`'s image scan: every image header (or N random ones), in P processes, with progress.

    result = scan(cfg, procs=4, sample=None, progress=lambda done, total: ...)
    result.checked, result.bad          # images whose header was read; "NAME: reason" for each bad one

Folder: the file list comes from the index (distrib/data/index.py), cut into chunks that a process pool
reads; opening a header is a few small reads, so on a 2-core machine two processes read ~2x as many as
one loop. Shards: every shard's tar members are compared with the offsets index (a truncated or
rewritten shard shows up), then the headers of the sampled members are read. Torch-free.
"""

from __future__ import annotations

import io
import random
from multiprocessing import get_context
from typing import NamedTuple

CHUNK = 2000  # images per task: big enough that the pool's overhead vanishes, small enough for a live ETA


class ScanResult(NamedTuple):
    checked: int
    bad: list[str]
    what: str  # what was read, for the report


def header_problem(source) -> str | None:
    """Why an image's header cannot be read (path or bytes), or None."""
    from PIL import Image

    from distrib.data.image_files import skip_reason

    try:
        with Image.open(source if isinstance(source, str) else io.BytesIO(source)) as im:
            im.size  # noqa: B018 - the header is parsed on open; size proves it
    except Exception as e:
        return skip_reason(source, e)
    return None


def _sources(cfg) -> dict:
    from distrib.data import formats

    if formats.format_of(cfg) == "shards":
        from distrib.data.shards import ShardSource, read_manifest

        return {s: ShardSource(cfg.data, s) for s in read_manifest(cfg.data)["splits"]}
    from distrib.data import index
    from distrib.data.folder import FolderSource

    idx = index.ensure(cfg.data, cfg.val_split)
    return {s: FolderSource(idx.split(s)) for s in idx.splits}


def _read_headers(job) -> list[str]:
    source, indices = job
    bad = []
    for i in indices:
        problem = header_problem(source.open(i))
        if problem:
            bad.append(f"{source.name(i)}: {problem}")
    return bad


def _verify(job) -> list[str]:
    from distrib.data.shards import verify_shard

    return verify_shard(*job)


def scan(cfg, procs: int, sample: int | None = None, progress=lambda done, total: None) -> ScanResult:
    sources = _sources(cfg)
    shards = [(cfg.data, split, n) for split, s in sources.items() for n in range(len(getattr(s, "shards", [])))]
    everything = [(split, i) for split, s in sources.items() for i in range(len(s.labels))] if sample else None
    if sample:
        picked = sorted(random.Random(0).sample(everything, min(sample, len(everything))))
        jobs = [(sources[split], [i for sp, i in picked if sp == split]) for split in sources]
    else:
        jobs = [(s, range(a, min(a + CHUNK, len(s.labels)))) for s in sources.values()
                for a in range(0, len(s.labels), CHUNK)]
    total, done, bad = len(shards) + sum(len(ix) for _, ix in jobs), 0, []
    progress(0, total)
    with get_context("forkserver").Pool(max(1, procs)) as pool:
        for problems in pool.imap_unordered(_verify, shards):
            bad += problems
            done += 1
            progress(done, total)
        for (_, ix), problems in zip(jobs, pool.imap(_read_headers, jobs)):
            bad += problems
            done += len(ix)
            progress(done, total)
    what = f"image headers (and {len(shards)} shards against their offsets index)" if shards else "image headers"
    return ScanResult(done - len(shards), bad, what)
