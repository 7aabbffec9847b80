"""`distrain status RUNS_DIR`: every run of a folder in one table (state, epoch of N, best acc1, img/s, last
update), newest update first. Torch-free: it reads each run dir's small files, as `status RUN_DIR` does."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from distrib.paths import RunPaths
from launch import run_dir as rd
from launch.console import duration

HEADER = ("run", "state", "epoch", "best acc1", "img/s", "last update")


def is_run_dir(path: Path) -> bool:
    paths = RunPaths(str(path))
    return any(os.path.exists(p) for p in (paths.config, paths.launch_record, paths.metrics, paths.checkpoints))


def runs_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_run_dir(p)) if folder.is_dir() else []


def last_update(path: Path) -> float:
    """When the run last wrote something people read: metrics, position, outcome, rank 0's log, TensorBoard."""
    paths = RunPaths(str(path))
    candidates = [paths.metrics, paths.position, paths.outcome, paths.rank_log(0), paths.config]
    if os.path.isdir(paths.tb):
        candidates += [os.path.join(paths.tb, name) for name in os.listdir(paths.tb)]
    times = [os.path.getmtime(p) for p in candidates if os.path.exists(p)]
    return max(times, default=os.path.getmtime(path))


@dataclass(frozen=True)
class Run:
    """One run dir's facts, read once, for a row of either table (a runs folder, a sweep)."""
    state: str            # the one-run view's word: running, finished, stopped, failed, not started
    rows: list[dict]      # metrics.jsonl, one per finished epoch
    done: int             # epochs complete (where last.pt is)
    epochs: int | None    # of how many; None when nothing says

    def best(self) -> float | None:
        """The best acc1 so far, by what best.pt is chosen by (the EMA's acc1 when it has one)."""
        if not self.rows:
            return None
        key = "val_ema_acc1" if "val_ema_acc1" in self.rows[-1] else "val_acc1"
        return max(r[key] for r in self.rows)


def read_run(path: Path) -> Run:
    from launch.status import state  # the one-run view's state words

    paths = RunPaths(str(path))
    rows = rd.metrics_rows(paths)
    where = rd.position(paths) or {}
    cfg = rd.recorded_config(paths)
    return Run(state(path)[0], rows, where.get("epoch", len(rows)), where.get("epochs") or (cfg.epochs if cfg else None))


def row(path: Path, now: float) -> tuple[str, ...]:
    run = read_run(path)
    best = run.best()
    rate = f"{run.rows[-1]['images_per_sec']:,.0f}" if run.rows else "-"
    return (path.name, run.state, f"{run.done} of {run.epochs or '?'}", f"{best:.2f}%" if best is not None else "-",
            rate, f"{duration(max(now - last_update(path), 0))} ago")


def table(folder: Path) -> list[str]:
    now = time.time()
    runs = sorted(runs_in(folder), key=last_update, reverse=True)
    rows = [HEADER] + [row(p, now) for p in runs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def show(folder: Path, out) -> None:
    for line in table(folder):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
