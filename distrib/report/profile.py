"""`--profile START:STEPS`: torch.profiler over a few training steps, on global rank 0 (every rank with
`--profile-ranks all`).

The trace is Chrome trace JSON (RUN_DIR/profile/rank{N}-trace.json) that Perfetto (ui.perfetto.dev) and
chrome://tracing open; the top operators and the share of the profiled time spent waiting for the next
batch are printed (and kept beside the trace as rank{N}-top.txt). Off by default: then nothing is created
and the loop's hook is a no-op.
"""

from __future__ import annotations

import logging
import os

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from distrib.paths import RunPaths

log = logging.getLogger("distrain")

DATA_WAIT = "enumerate(DataLoader)"  # the profiler's own name for a DataLoader's __next__
TOP_OPERATORS = 15


def window(value: str) -> tuple[int, int]:
    """'10:5' -> (10, 5): skip 10 steps of this process, then trace 5 (the format is checked in config)."""
    start, _, steps = value.partition(":")
    return int(start), int(steps)


class Profiler:
    def __init__(self, paths: RunPaths, rank: int, start: int, steps: int, cuda: bool):
        self.paths, self.rank, self.done = paths, rank, False
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        warmup = 1 if start else 0  # the step before the window warms the profiler up (not recorded)
        self.prof = profile(activities=activities, schedule=schedule(wait=start - warmup, warmup=warmup,
                                                                     active=steps, repeat=1),
                            on_trace_ready=self._ready)
        self.prof.start()

    @classmethod
    def from_config(cls, cfg, rank: int, device: torch.device) -> Profiler | None:
        if not cfg.profile or (cfg.profile_ranks == "0" and rank != 0):
            return None
        start, steps = window(cfg.profile)
        return cls(RunPaths(cfg.run_dir), rank, start, steps, device.type == "cuda")

    def step(self) -> None:
        if self.prof is None:
            return
        self.prof.step()
        if self.done:  # the window is over: detach the profiler, later steps cost nothing
            self.prof.stop()
            self.prof = None

    def close(self) -> None:
        """At the end of training: a window the run did not reach is said, not silently dropped."""
        if self.prof is not None:
            self.prof.stop()
            self.prof = None
            if not self.done:
                log.warning("--profile: the run ended before the profiled steps; nothing was traced")

    def _ready(self, prof) -> None:
        self.done = True
        os.makedirs(self.paths.profile, exist_ok=True)
        trace = self.paths.profile_trace(self.rank)
        prof.export_chrome_trace(trace)
        text = summary(prof.key_averages())
        with open(self.paths.profile_table(self.rank), "w") as fh:
            fh.write(text + "\n")
        log.info("profile of rank %d: trace %s (open it in ui.perfetto.dev)\n%s", self.rank, trace, text)


def summary(averages) -> str:
    """The top operators by their own CPU time, and the data-wait share of the profiled steps."""
    steps = [e for e in averages if e.key.startswith("ProfilerStep")]
    total = sum(e.cpu_time_total for e in steps)
    waited = sum(e.cpu_time_total for e in averages if e.key.startswith(DATA_WAIT))
    table = averages.table(sort_by="self_cpu_time_total", row_limit=TOP_OPERATORS)
    share = (f"data wait: {100 * waited / total:.1f}% of {total / 1e3:.1f} ms over the profiled steps "
             "(time in the DataLoader's next())" if total else "data wait: no profiled step was recorded")
    return f"{table}\n{share}"
