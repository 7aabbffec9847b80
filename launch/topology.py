"""What runs where: from --nodes/--gpus/--procs/--strategy to a plan (launch/torchrun.py turns it into the
command line), and the probes of what this machine and its SLURM allocation offer.

Everything here is a pure function of its inputs (the config and what the machine shows), so dry runs
and tests see exactly what a real launch runs. No torch import.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass

from distrib.config import ConfigError, RunConfig

DEFAULT_RDZV_PORT = 29400


@dataclass(frozen=True)
class Plan:
    mode: str              # standalone | c10d | salloc | slurm | dp
    min_nodes: int
    max_nodes: int
    procs_per_node: int
    device: str            # cuda | cpu
    global_batch: int      # at the largest world size
    lr: float              # scaled to that global batch
    rdzv_endpoint: str | None
    rdzv_id: str | None

    @property
    def world_size(self) -> int:
        return self.max_nodes * self.procs_per_node

    @property
    def nnodes(self) -> str:
        return str(self.max_nodes) if self.min_nodes == self.max_nodes else f"{self.min_nodes}:{self.max_nodes}"


def visible_gpus(environ=None) -> int:
    """GPUs this process could use, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi -L."""
    env = os.environ if environ is None else environ
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def allocation_nodes(environ=None) -> int | None:
    """Nodes of the SLURM allocation this shell is in (salloc, or a batch script), None outside one.
    A job step (srun) is not an allocation shell: distrain must not start steps from inside a step."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env or "SLURM_STEP_ID" in env:
        return None
    return int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))


def make_plan(cfg: RunConfig, gpus_here: int, allocated_nodes: int | None = None) -> Plan:
    """Resolve the topology from the options; whether this machine has the GPUs is preflight's question."""
    lo, hi = cfg.min_max_nodes()
    gpus = gpus_here if cfg.gpus is None else cfg.gpus
    device = "cuda" if gpus > 0 else "cpu"
    if cfg.strategy == "dp":
        procs, mode = 1, "dp"
    else:
        procs = gpus if gpus > 0 else cfg.procs
        mode = "standalone"
        if cfg.slurm:
            mode = "slurm"
        elif allocated_nodes and not cfg.rdzv_endpoint:
            mode = "salloc"  # the allocation decides the node count; a different --nodes is a mistake
            if hi > 1 and (lo, hi) != (allocated_nodes, allocated_nodes):
                raise ConfigError(f"--nodes {cfg.nodes} but this SLURM allocation has {allocated_nodes} node(s); "
                                  f"drop --nodes or use --nodes {allocated_nodes}")
            lo = hi = allocated_nodes
        elif hi > 1 or cfg.rdzv_endpoint:
            mode = "c10d"
            if not cfg.rdzv_endpoint:
                raise ConfigError(f"--nodes {cfg.nodes} outside SLURM needs --rdzv-endpoint HOST:PORT (the first "
                                  "node's address); run the same command on every node, or use --slurm")
    global_batch = cfg.global_batch(procs * hi)
    endpoint = cfg.rdzv_endpoint
    if endpoint and ":" not in endpoint:
        endpoint = f"{endpoint}:{DEFAULT_RDZV_PORT}"
    return Plan(mode=mode, min_nodes=lo, max_nodes=hi, procs_per_node=procs, device=device,
                global_batch=global_batch, lr=cfg.scaled_lr(procs * hi), rdzv_endpoint=endpoint,
                rdzv_id=rdzv_id(cfg) if mode == "c10d" else None)


def rdzv_id(cfg: RunConfig) -> str:
    """Derived from what every node's identical command line says, so all nodes agree without talking."""
    key = "|".join(str(x) for x in (cfg.run_dir, cfg.rdzv_endpoint, cfg.arch, cfg.data, cfg.nodes))
    return "distrain-" + hashlib.sha1(key.encode()).hexdigest()[:12]
