"""Naming a hung rank: every rank records its step in the run's TCP store; when a collective times out
(--dist-timeout), the ranks still alive read those records and say which rank stopped making progress.

A timeout alone says "recv timed out"; with the store it says "rank 1 (at step 12) is hung".
"""

from __future__ import annotations

import datetime
import logging
import os
import time

import torch.distributed as dist

from distrib.env import DistEnv

log = logging.getLogger("distrain")


class HungRankError(RuntimeError):
    """A collective timed out; the message names the rank(s) that stopped."""

    user_facing = True


class Heartbeat:
    def __init__(self, env: DistEnv, timeout_s: int):
        self.env, self.timeout_s, self.store = env, timeout_s, None
        if env.is_distributed and env.world_size > 1 and "MASTER_ADDR" in os.environ:
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=datetime.timedelta(seconds=30), wait_for_workers=False)
            self.store = dist.PrefixStore(f"distrain/heartbeat/{env.restart_count}/", store)

    def beat(self, step: int) -> None:
        if self.store is not None:
            self.store.set(str(self.env.rank), str(step))

    def steps(self) -> dict[int, int]:
        """Last step each rank reported (-1: never reported)."""
        out = {}
        for rank in range(self.env.world_size):
            key = str(rank)
            out[rank] = int(self.store.get(key)) if self.store.check([key]) else -1
        return out

    def explain(self, error: Exception) -> HungRankError | None:
        """A HungRankError naming the hung rank(s) if `error` is a collective timeout, else None.

        Every rank that timed out says so in the store and waits a moment for the others: a rank that
        never says so is not waiting in the collective at all; it is the one that hangs.
        """
        text = str(error).lower()
        if self.store is None or not ("timed out" in text or "timeout" in text):
            return None
        try:
            silent = self._ranks_not_reporting_a_timeout()
            steps = self.steps()
        except Exception:  # the store itself may be gone with the agent; then say what we know
            return HungRankError(f"a collective timed out after {self.timeout_s} s (--dist-timeout); "
                                 f"a peer of rank {self.env.rank} stopped answering")
        if not silent:
            return HungRankError(f"a collective timed out after {self.timeout_s} s (--dist-timeout) on every "
                                 "rank: the network between them, or ranks waiting in different collectives")
        names = ", ".join(f"rank {r} (at step {steps[r]})" for r in silent)
        return HungRankError(f"a collective timed out after {self.timeout_s} s (--dist-timeout): {names} stopped "
                             f"making progress and is hung (data loading, I/O, or a deadlock); the other ranks "
                             f"were waiting for it. See logs/rank{silent[0]}.log")

    def _ranks_not_reporting_a_timeout(self, grace_s: float = 5.0) -> list[int]:
        self.store.set(f"timedout/{self.env.rank}", "1")
        keys = {r: f"timedout/{r}" for r in range(self.env.world_size)}
        deadline = time.monotonic() + grace_s
        while True:
            silent = [r for r, key in keys.items() if not self.store.check([key])]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.2)
