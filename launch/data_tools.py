"""`distrain pack` and `distrain index`: the terminal side of distrib/data/pack.py and distrib/data/index.py."""

from __future__ import annotations

import time

from distrib.config import RunConfig
from distrib.words import counted


def pack(data: str, output: str, shard_size: str, procs: int, out) -> int:
    from distrib.data import layout
    from distrib.data import pack as packer
    from launch.console import progress as live_progress

    layout.splits(data, layout.tool_val_split(data, None))  # one-line errors first
    shard_bytes = packer.parse_size(shard_size)
    start = time.monotonic()
    with live_progress(out, f"packing {data} ({counted(procs, 'process')})") as progress:
        manifest = packer.pack(data, output, shard_bytes, procs, progress)
    counts = ", ".join(f"{split} {counted(m['count'], 'image')} in {counted(len(m['shards']), 'shard')}"
                       for split, m in manifest["splits"].items())
    out.print(f"packed {len(manifest['classes'])} classes: {counts}, in {time.monotonic() - start:.1f} s; "
              f"train on it with --data {output}", soft_wrap=True, markup=False)
    return 0


def index(data: str, val_split: float | None, rebuild: bool, out) -> int:
    from distrib.data import index as sample_index
    from distrib.data.layout import tool_val_split

    val_split = tool_val_split(data, val_split)
    RunConfig(data=data, val_split=val_split).validate()
    start = time.monotonic()
    idx = sample_index.ensure(data, val_split, rebuild=rebuild)
    counts = ", ".join(f"{split} {len(idx.split(split))}" for split in idx.splits)
    out.print(f"index of {data}: {len(idx.classes)} classes, {counts} images, in {idx.folder} "
              f"({time.monotonic() - start:.1f} s)", soft_wrap=True, markup=False)
    return 0
