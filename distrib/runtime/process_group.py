"""The process group, set up and torn down in one place, plus the few reductions training needs."""

from __future__ import annotations

import contextlib
import datetime
import os

import torch
import torch.distributed as dist

from distrib.runtime.env import DistEnv


def pick_device(env: DistEnv, want: str) -> torch.device:
    """cuda:LOCAL_RANK when CUDA is wanted and present, else the CPU."""
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is visible to this process")
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


@contextlib.contextmanager
def process_group(env: DistEnv, device: torch.device, timeout_s: int):
    """init_process_group on entry (nccl on CUDA, gloo on CPU), destroy on exit, whatever happened."""
    if not env.is_distributed or env.world_size == 1 and env.launcher == "none":
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend, store=_attempt_store(env, timeout), rank=env.rank, world_size=env.world_size,
                            timeout=timeout, device_id=device if device.type == "cuda" else None)
    try:
        yield
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _attempt_store(env: DistEnv, timeout: datetime.timedelta) -> dist.Store:
    """The run's TCP store, with keys private to this restart attempt.

    torchrun keeps one store across elastic restarts: without the prefix, a restarted group reads the
    dead group's gloo addresses and hangs in connectFullMesh. Under torchrun the agent hosts the store at
    MASTER_ADDR:MASTER_PORT, unless it says it does not (TORCHELASTIC_USE_AGENT_STORE=False, multi-node
    launches); then, as under srun alone, rank 0 hosts it there (the sbatch script exports both).
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    hosts_it = env.rank == 0 and not _agent_hosts_store(env)
    store = dist.TCPStore(host, port, world_size=env.world_size if hosts_it else None, is_master=hosts_it,
                          timeout=timeout, wait_for_workers=False)
    return dist.PrefixStore(f"distrain/{store_scope(env)}/", store)


def _agent_hosts_store(env: DistEnv) -> bool:
    return env.launcher == "torchrun" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "False"


def store_scope(env: DistEnv) -> str:
    """A key prefix every rank of this attempt agrees on. The agents' shared store outlives attempts, so
    its keys carry the restart count; a store that rank 0 hosts is new every attempt, and restart counts
    differ between agents anyway once a node joins late (elastic scale-up)."""
    return f"attempt{env.restart_count}" if _agent_hosts_store(env) else "attempt"


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over every rank (identity on one process). Exact for counts held as float64."""
    if is_dist():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def all_gather_rows(row: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-D row stacked by rank: (world, len) (one row on one process)."""
    if not is_dist():
        return row.reshape(1, -1)
    rows = [torch.empty_like(row) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, row)
    return torch.stack(rows)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (used for stop requests at step boundaries)."""
    if not is_dist():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
