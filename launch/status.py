"""What a run dir says about its run, in words: `distrain status RUN_DIR`, and the summary printed when a
run ends (or is launched again when already complete). Torch-free: it reads the run dir's small files."""

from __future__ import annotations

import glob
import os
import shlex
from pathlib import Path

from distrib.config import ConfigError
from distrib.files import read_json
from distrib.paths import RunPaths
from distrib.words import epoch_name, input_verdict, position_words
from launch import run_dir as rd
from launch.console import duration


def newest_log(run_dir: Path) -> str | None:
    paths = RunPaths(str(run_dir))
    logs = glob.glob(paths.slurm_logs) or glob.glob(paths.rank_log(0))
    return max(logs, key=os.path.getmtime) if logs else None


def tail(path: str, lines: int = 10) -> list[str]:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 16384))
        return fh.read().decode(errors="replace").splitlines()[-lines:]


def summary(run_dir: str, data: str | None = None) -> list[str]:
    """Best and final accuracy, time, throughput, the checkpoints and the commands that use them."""
    paths = RunPaths(run_dir)
    rows = rd.metrics_rows(paths)
    if not rows:
        return [f"no finished epoch in {run_dir} yet"]
    acc = "val_ema_acc1" if "val_ema_acc1" in rows[-1] else "val_acc1"  # what best.pt was chosen by
    best = max(rows, key=lambda r: r[acc])
    last = rows[-1]
    seconds = sum(r["epoch_seconds"] for r in rows)
    images = sum(r["images_per_sec"] * r["epoch_seconds"] for r in rows)
    wall = (rd.outcome(paths) or {}).get("wall_seconds") or seconds
    ema = " (EMA weights: best.pt, eval, predict and export use them)" if acc == "val_ema_acc1" else ""
    five = acc.replace("acc1", "acc5")
    lines = [f"  best acc1 {best[acc]:.2f}% at {epoch_name(best['epoch'])}{ema}; final acc1 {last[acc]:.2f}%, "
             f"acc5 {last[five]:.2f}% ({epoch_name(last['epoch'])})",
             f"  {len(rows)} epoch(s), wall time {duration(wall)}, {images / max(seconds, 1e-9):,.0f} img/s "
             f"training on average",
             *_input_lines(rows, rd.recorded_config(paths)),
             f"  best.pt  {paths.best}",
             f"  last.pt  {paths.last}"]
    q = shlex.quote
    data_arg = f" --data {q(data)}" if data else " --data DATA"
    lines += ["next:",
              f"  distrain eval --checkpoint {q(paths.best)}{data_arg}",
              f"  distrain predict --checkpoint {q(paths.best)} IMAGES...",
              f"  distrain export --checkpoint {q(paths.best)} --format onnx --output {q(paths.export)}",
              f"  distrain tensorboard {q(os.path.dirname(run_dir) or '.')}"]
    return lines


def _input_lines(rows: list[dict], cfg) -> list[str]:
    """The last epoch's data-wait verdict (rows from before the monitor have none)."""
    last = rows[-1]
    if "data_wait_share" not in last:
        return []
    on_cpu = cfg is not None and (cfg.gpus == 0 or cfg.device == "cpu")
    return [f"  {epoch_name(last['epoch'])}: " + input_verdict(last["data_wait_share"], cfg.workers if cfg else None,
                                                           last.get("node_cores"), last.get("node_procs"),
                                                           gpu=not on_cpu)]


def live_line(paths: RunPaths, now: float | None = None, running: bool = True) -> str | None:
    """Rank 0's newest step-level figures (RUN_DIR/live.json, every --log-interval steps), in one line; of a
    run that is not running, the last ones it wrote, without an ETA."""
    import time

    f = read_json(paths.live)
    if not f:
        return None
    age = duration(max((now or time.time()) - f["time"], 0))
    parts = [(f"  {'newest' if running else 'last'} step figures ({age} ago): "
              f"{position_words(f['epoch'], f['batch'], f['batches'])} (global step {f['step']})"),
             f"loss {f['loss']:.4f} (worst rank {f['loss_max']:.4f})" if f.get("loss_max") is not None
             else f"loss {f['loss']:.4f}",
             f"{f['images_per_sec']:,.0f} img/s", f"{f['step_time']:.3f} s/step",
             f"data wait {100 * f['data_wait_share']:.0f}%"]
    if f.get("slowest_rank") is not None:
        parts.append(f"slowest rank {f['slowest_rank']} ({f['slowest_host']}) {f['slowest_ratio']:.2f}x the median"
                     + (f", slow in {f['slowest_cause']}" if f.get("straggling") else ""))
    if f.get("max_allocated_gib") is not None:
        parts.append(f"memory {f['max_allocated_gib']:.1f} GiB allocated, {f['max_reserved_gib']:.1f} reserved")
    elif f.get("rss_gib_max") is not None:
        parts.append(f"memory {f['rss_gib_max']:.2f} GiB resident (largest rank)")
    if running:
        parts.append(f"ETA {duration(f['eta_seconds'])} of training steps")
    return ", ".join(parts)


def state(run_dir: Path) -> tuple[str, str]:
    """(running | finished | stopped | failed | not started, a few words of detail)."""
    paths = RunPaths(str(run_dir))
    launch = read_json(paths.launch_record) or {}
    job_id = launch.get("job_id")
    where = rd.position(paths) or {}
    epochs = where.get("epochs") or _configured_epochs(paths)
    done = where.get("epoch", 0)
    if job_id:
        from slurm.submit import job_state

        slurm_state = job_state(job_id) or "unknown (not in squeue, no accounting)"
        word = {"RUNNING": "running", "PENDING": "pending", "COMPLETED": "finished", "FAILED": "failed",
                "CANCELLED": "stopped", "TIMEOUT": "stopped", "PREEMPTED": "stopped"}.get(slurm_state, slurm_state)
        if word == "finished" and epochs and done < epochs:
            word = "stopped"
        return word, f"SLURM job {job_id}: {slurm_state}"
    outcome = rd.outcome(paths) or {}
    word = outcome.get("state", "not started" if not where else "stopped")
    if word == "running" and rd.launcher_alive(outcome) is False:  # another machine's: assume it runs
        word = "failed"
        return word, "its launcher is gone without saying how it ended (killed, or the machine went down)"
    return word, f"launched with {launch.get('mode', '?')} on {launch.get('host', '?')}"


def _configured_epochs(paths: RunPaths) -> int | None:
    cfg = rd.recorded_config(paths)
    return cfg.epochs if cfg else None


def show(run_dir: Path, out) -> None:
    paths = RunPaths(str(run_dir))
    if not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} does not exist; pass a folder made by distrain launch")
    if not any(os.path.exists(p) for p in (paths.config, paths.launch_record, paths.metrics, paths.checkpoints)):
        raise ConfigError(f"{run_dir} is not a distrain run dir (no config.toml, metrics or checkpoints); pass "
                          "the folder `distrain launch` printed as its run dir")
    word, detail = state(run_dir)
    where = rd.position(paths) or {}
    epochs = where.get("epochs") or _configured_epochs(paths)
    progress = f"{where.get('epoch', 0)} of {epochs} epochs done" if epochs else "no checkpoint yet"
    if where.get("batch"):
        progress += f", last.pt at {position_words(where['epoch'], where['batch'], where.get('batches'))}"
    out.print(f"{run_dir}: [bold]{word}[/], {progress}; {detail}", soft_wrap=True)
    live = live_line(paths, running=word == "running")
    if live:
        out.print(live, markup=False, highlight=False, soft_wrap=True)
    lines = summary(str(run_dir))
    for line in lines[:lines.index("next:")] if "next:" in lines else lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    failure = _failure_line(str(run_dir)) if word == "failed" else None
    if failure:
        out.print(f"  failed: {failure}", markup=False, highlight=False, soft_wrap=True)
    from distrib.runtime import hangs

    for line in hangs.describe(str(run_dir)):  # a hang's explanation and stacks (distrib/runtime/hangs.py)
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    log = newest_log(run_dir)
    if log:
        out.print(f"--- {log}", soft_wrap=True, markup=False)
        for line in tail(log):
            out.print(line, markup=False, highlight=False, soft_wrap=True)


def _failure_line(run_dir: str) -> str | None:
    from launch.run_local import rank_failure

    failure = rank_failure(run_dir)
    return str(failure) if failure else None
