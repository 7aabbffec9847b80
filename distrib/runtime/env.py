"""Where this process sits in the run, read once from the environment into a frozen dataclass; and the
cores it may use (torch-free: the launcher shares the one count and the one OMP_NUM_THREADS).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE. A process started by srun alone
(`--launcher srun`) has SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS instead. With neither, this is
the only process of the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    launcher: str = "none"  # torchrun | srun | none
    restart_count: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT

    @property
    def is_distributed(self) -> bool:
        return self.launcher != "none"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "DistEnv":
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls(
                rank=int(env["RANK"]),
                local_rank=int(env.get("LOCAL_RANK", 0)),
                world_size=int(env["WORLD_SIZE"]),
                local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
                launcher="torchrun",
                restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
            )
        if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            ntasks = int(env["SLURM_NTASKS"])
            nnodes = int(env.get("SLURM_NNODES", 1))
            return cls(
                rank=int(env["SLURM_PROCID"]),
                local_rank=int(env.get("SLURM_LOCALID", 0)),
                world_size=ntasks,
                local_world_size=max(1, ntasks // nnodes),
                launcher="srun",
                restart_count=int(env.get("SLURM_RESTART_COUNT", 0)),
            )
        return cls()


def cpu_cores() -> int:
    """The cores this process may run on (its affinity: taskset, a SLURM allocation), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def omp_threads(procs: int, environ: Mapping[str, str], cores: int | None = None) -> str:
    """OMP_NUM_THREADS for `procs` processes sharing these cores (or `cores`; at least 1); the user's own
    setting wins."""
    return environ.get("OMP_NUM_THREADS", str(max(1, (cores or cpu_cores()) // max(procs, 1))))
