"""Step-level figures of one rank, reduced over the run every --log-interval steps: loss, lr, img/s, step time,
data wait, grad norm, loss scale, memory, and which rank is the straggler.

Every rank keeps a few host floats per interval (no host sync per step; the loss stays in the training loop's
device sums) and all ranks meet in ONE all_gather of a short float64 row per interval. What is timed:

    data wait  time inside the loader's next() (the rank waits for its next batch)
    compute    from the model's forward pre-hook (after DDP's buffer broadcast) to the gradient of its first
               trainable parameter (the last one backward computes): the part of a step before the gradient
               all-reduce, where the fast ranks of a DDP run wait for the slow one
    wall       the interval's wall time, the same on every rank (the collectives line them up)

The x-axis is progress.step, optimizer steps since the start of the run: it survives resume, requeues and
elastic world-size changes, and points land on its multiples of --log-interval only.
"""

from __future__ import annotations

import math
import os
import resource
import socket
import statistics
import time

import torch
import torch.distributed as dist

from distrib.runtime.env import DistEnv, cpu_cores
from distrib.runtime.process_group import all_gather_rows, is_dist

STRAGGLER_SLOWER = 0.20   # a rank this much slower than the median of the others ...
STRAGGLER_INTERVALS = 3   # ... for this many intervals in a row is named
FIELDS = ("loss_sum", "images", "grad_norm", "wait", "compute", "steps", "wall", "mem_alloc", "mem_reserved",
          "alloc_retries", "ooms", "rss")
GIB = 2 ** 30


class StepMonitor:
    def __init__(self, interval: int, env: DistEnv, device: torch.device, model: torch.nn.Module,
                 steps_per_epoch: int, epochs: int, accum_steps: int = 1, time_compute: bool = True):
        self.interval, self.env, self.device = interval, env, device
        self.steps_per_epoch, self.epochs, self.accum_steps = steps_per_epoch, epochs, accum_steps
        self.hosts = _gather_hosts(env)
        self.cores = cpu_cores()
        self._streak: tuple[int | None, int] = (None, 0)
        self._epoch_wait = self.epoch_wait_share = 0.0
        self._t_forward = None
        if time_compute and interval:  # --log-interval 0: no hooks; only the epoch's data wait is timed
            self._hook_compute(model)
        self._reset(None)

    # --- timing -------------------------------------------------------------------------------------------
    def timed(self, loader):
        """The loader's batches, timing each next() as data wait (the iterator's start too: workers starting)."""
        self._reset(None)
        self._epoch_wait, self._t_forward = 0.0, None
        started = time.monotonic()
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                return
            waited = time.monotonic() - started
            self._wait += waited
            self._epoch_wait += waited
            yield batch
            started = time.monotonic()

    def _hook_compute(self, model: torch.nn.Module) -> None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            return

        def forward_starts(module, args):
            if module.training and self._t_forward is None:  # not validation's forwards
                self._t_forward = time.monotonic()

        def backward_ends(param):
            if self._t_forward is not None:
                self._compute += time.monotonic() - self._t_forward
                self._t_forward = None

        model.register_forward_pre_hook(forward_starts)
        trainable[0].register_post_accumulate_grad_hook(backward_ends)

    def _reset(self, loss_sums: torch.Tensor | None) -> None:
        self._wait = self._compute = 0.0
        self._steps = 0
        self._t0 = time.monotonic()
        self._loss_seen = None if loss_sums is None else loss_sums.detach().clone()

    # --- the interval -------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return bool(self.interval) and step % self.interval == 0

    def step(self, state, loss_sums: torch.Tensor, grad_norm: torch.Tensor | None) -> dict | None:
        """After each optimizer step. loss_sums: this epoch's (loss x images, images) device sums on this rank.
        Every --log-interval steps: one all_gather, and the interval's figures (the same on every rank)."""
        self._steps += 1
        progress = state.progress
        if not self.due(progress.step):
            return None
        interval_sums = loss_sums if self._loss_seen is None else loss_sums - self._loss_seen
        norm = (grad_norm.detach().double().reshape(1) if grad_norm is not None
                else torch.full((1,), math.nan, dtype=torch.float64, device=loss_sums.device))
        rows = self._gather(torch.cat([interval_sums.double(), norm]))
        figures = self._figures(rows, state)
        self._reset(loss_sums)
        return figures

    def _gather(self, device_part: torch.Tensor) -> dict[str, list[float]]:
        host = torch.tensor([self._wait, self._compute, self._steps, time.monotonic() - self._t0, *self._memory()],
                            dtype=torch.float64)
        row = torch.cat([device_part, host.to(device_part.device)])
        table = all_gather_rows(row).cpu().tolist()  # the one host sync of the interval
        return {name: [r[i] for r in table] for i, name in enumerate(FIELDS)}

    def _memory(self) -> list[float]:
        """max allocated, max reserved, alloc retries, OOMs on CUDA (peaks since the last interval); RSS."""
        rss = _resident_bytes()
        if self.device.type != "cuda":
            return [0.0, 0.0, 0.0, 0.0, rss]
        stats = torch.cuda.memory_stats(self.device)
        out = [torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device),
               stats.get("num_alloc_retries", 0), stats.get("num_ooms", 0), rss]
        torch.cuda.reset_peak_memory_stats(self.device)
        return [float(x) for x in out]

    def _figures(self, rows: dict[str, list[float]], state) -> dict:
        progress, world = state.progress, len(rows["wall"])
        wall = max(rows["wall"])
        steps = max(max(rows["steps"]), 1)
        images = sum(rows["images"])
        rank_loss = [s / n for s, n in zip(rows["loss_sum"], rows["images"]) if n]
        step_time = wall / steps
        figures = {
            "step": progress.step, "epoch": progress.epoch, "batch": progress.batch // self.accum_steps,
            "batches": self.steps_per_epoch, "world_size": world, "time": time.time(),
            "loss": sum(rows["loss_sum"]) / max(images, 1), "loss_max": max(rank_loss, default=math.nan),
            "lr": state.scheduler.get_last_lr()[0], "images_per_sec": images / max(wall, 1e-9),
            "step_time": step_time, "data_wait_share": max(rows["wait"]) / max(wall, 1e-9),
            "grad_norm": rows["grad_norm"][0], "cores": self.cores,
            "loss_scale": state.scaler.get_scale() if state.scaler.is_enabled() else None,
            "rss_gib": [r / GIB for r in rows["rss"]], "device": self.device.type,
        }
        if self.device.type == "cuda":
            figures.update({"max_allocated_gib": max(rows["mem_alloc"]) / GIB,
                            "max_reserved_gib": max(rows["mem_reserved"]) / GIB,
                            "alloc_retries": max(rows["alloc_retries"]), "ooms": max(rows["ooms"])})
        total = self.epochs * self.steps_per_epoch
        done = progress.epoch * self.steps_per_epoch + figures["batch"]
        figures["eta_seconds"] = max(total - done, 0) * step_time
        figures.update(self._straggler(rows, steps))
        return figures

    # --- stragglers ---------------------------------------------------------------------------------------
    def _straggler(self, rows: dict[str, list[float]], steps: int) -> dict:
        """The slowest rank by the part before the all-reduce (data wait + compute), against the median of the
        others; named after STRAGGLER_INTERVALS intervals in a row over STRAGGLER_SLOWER."""
        busy = [w + c for w, c in zip(rows["wait"], rows["compute"])]
        if len(busy) < 2:
            return {}
        slowest = max(range(len(busy)), key=busy.__getitem__)
        others = [i for i in range(len(busy)) if i != slowest]
        median = statistics.median(busy[i] for i in others)
        ratio = busy[slowest] / median if median > 0 else 1.0
        extra_wait = rows["wait"][slowest] - statistics.median(rows["wait"][i] for i in others)
        extra_compute = rows["compute"][slowest] - statistics.median(rows["compute"][i] for i in others)
        cause = "data" if extra_wait > extra_compute else "compute"
        out = {"slowest_rank": slowest, "slowest_host": self.hosts[slowest], "slowest_ratio": ratio,
               "slowest_cause": cause, "straggling": ratio > 1 + STRAGGLER_SLOWER}
        rank, count = self._streak
        if out["straggling"]:
            count = count + 1 if rank == slowest else 1
            self._streak = (slowest, count)
        else:
            self._streak = (None, 0)
            return out
        if count == STRAGGLER_INTERVALS:
            what = (f"waits on data ({rows['wait'][slowest] / steps:.3f} s per step waiting for batches vs "
                    f"{statistics.median(rows['wait'][i] for i in others) / steps:.3f} s on the others)"
                    if cause == "data" else
                    f"is slow in compute (forward+backward {rows['compute'][slowest] / steps:.3f} s per step vs "
                    f"{statistics.median(rows['compute'][i] for i in others) / steps:.3f} s on the others)")
            out["straggler_line"] = (
                f"straggler: rank {slowest} on host {self.hosts[slowest]} is {100 * (ratio - 1):.0f}% slower than "
                f"the median rank for {count} log intervals in a row: it {what}; the other ranks wait for it in "
                "the gradient all-reduce")
        return out

    # --- the epoch ----------------------------------------------------------------------------------------
    def end_epoch(self, seconds: float) -> None:
        """Collective: the epoch's data-wait share of step time (epoch_wait_share), the max over ranks (under
        DDP every rank waits for the one waiting on data)."""
        waits = all_gather_rows(torch.tensor([self._epoch_wait], dtype=torch.float64, device=self.device))
        self.epoch_wait_share = float(waits.max()) / max(seconds, 1e-9)


def _gather_hosts(env: DistEnv) -> list[str]:
    host = socket.gethostname()
    if not is_dist():
        return [host]
    hosts: list = [None] * env.world_size
    dist.all_gather_object(hosts, host)
    return hosts


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
