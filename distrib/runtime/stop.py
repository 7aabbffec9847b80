"""Stop requests: SIGTERM, SIGINT, SIGUSR1 or a STOP file make every rank stop at the next step boundary.

SLURM's `--signal=B:USR1@N` reaches only the batch shell, which touches RUN_DIR/STOP (slurm/sbatch.py);
torchrun forwards SIGTERM/SIGINT to the workers. Either way the flag is agreed by an all-reduce, so all
ranks leave the loop at the same step and rank 0 can write last.pt.
"""

from __future__ import annotations

import logging
import os
import signal

import torch

from distrib.paths import RunPaths
from distrib.runtime.process_group import broadcast_flag

log = logging.getLogger("distrain")


class StopRequest:
    def __init__(self, stop_file: str):
        self.stop_file = stop_file
        self.signalled: str | None = None

    @classmethod
    def install(cls, run_dir: str) -> "StopRequest":
        stop = cls(os.environ.get("DISTRAIN_STOP_FILE") or RunPaths(run_dir).stop)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            signal.signal(sig, stop._on_signal)
        return stop

    def _on_signal(self, signum, frame) -> None:
        if self.signalled is None:
            self.signalled = signal.Signals(signum).name
            log.warning("%s received: stopping at the next step boundary", self.signalled)

    def requested(self, device: torch.device) -> bool:
        """Collective: every rank must call it at the same step."""
        local = self.signalled is not None or os.path.exists(self.stop_file)
        return broadcast_flag(local, device)
