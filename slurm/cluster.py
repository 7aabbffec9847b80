"""What SLURM says about a partition's nodes: GPUs, CPUs, the default CPUs per GPU. A job's topology comes
from the cluster, not from the login node it is submitted on (which often has no GPU at all).

    part = partition("gpu")          # None when sinfo is not here (a dry run prepared elsewhere)
    part.gpus_per_node, part.cpus_per_node, part.def_cpu_per_gpu

Torch-free; sinfo and scontrol are the source.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class Partition:
    name: str
    gpus_per_node: int             # the fewest GPUs any of its nodes has (GRES gpu[:type]:N); 0 without
    cpus_per_node: int             # the fewest CPUs any of its nodes has
    def_cpu_per_gpu: int | None    # the partition's DefCpuPerGPU, when it sets one


def gpu_count(gres: str) -> int:
    """GPUs in one node's GRES string: 'gpu:a100:4(S:0-1),nvme:1' -> 4; '(null)' -> 0."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def _run(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def partition(name: str | None) -> Partition | None:
    """The partition `name` (the cluster's default one when None); None when SLURM cannot be asked here or
    knows no such partition."""
    if not shutil.which("sinfo"):
        return None
    out = _run(["sinfo", "-h", "-N", "-o", "%P|%G|%c", *(["-p", name] if name else [])])
    if not out:
        return None
    rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
    if name is None:  # the default partition is marked with a star
        rows = [r for r in rows if r[0].endswith("*")]
    if not rows:
        return None
    chosen = rows[0][0].rstrip("*")
    rows = [r for r in rows if r[0].rstrip("*") == chosen]
    conf = _run(["scontrol", "show", "partition", chosen, "-o"]) or ""
    default = re.search(r"DefCpuPerGPU=(\d+)", conf)
    return Partition(chosen, min(gpu_count(r[1]) for r in rows), min(int(r[2]) for r in rows if r[2].isdigit()),
                     int(default.group(1)) if default else None)
