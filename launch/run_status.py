"""`distrain status RUN_DIR`: the job's state, the last finished epoch, the best accuracy, the log's tail."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from distrib.config import ConfigError


def last_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return rows


def newest_log(run_dir: Path) -> str | None:
    logs = glob.glob(str(run_dir / "logs" / "slurm-*.out")) or glob.glob(str(run_dir / "logs" / "rank0.log"))
    return max(logs, key=os.path.getmtime) if logs else None


def tail(path: str, lines: int = 10) -> list[str]:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 16384))
        return fh.read().decode(errors="replace").splitlines()[-lines:]


def show(run_dir: Path, out) -> None:
    if not run_dir.is_dir():
        raise ConfigError(f"run dir {run_dir} does not exist; pass a folder made by distrain launch")
    launch = json.loads((run_dir / "launch.json").read_text()) if (run_dir / "launch.json").exists() else {}
    job_id = launch.get("job_id")
    if job_id:
        from slurm.submit import job_state

        out.print(f"job {job_id}: {job_state(job_id) or 'unknown (not in squeue, no accounting)'}")
    else:
        out.print(f"launched with {launch.get('mode', 'unknown')} on {launch.get('host', '?')}")
    rows = last_rows(run_dir)
    if rows:
        last = rows[-1]
        best = max(r["val_acc1"] for r in rows)
        out.print(f"last finished epoch {last['epoch']}: val acc1 {last['val_acc1']:.2f}%, "
                  f"train loss {last['train_loss']:.4f}; best acc1 {best:.2f}%")
    else:
        out.print("no finished epoch yet")
    from distrib import hangs

    for line in hangs.describe(str(run_dir)):  # a hang's explanation and stacks (distrib/hangs.py)
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    log = newest_log(run_dir)
    if log:
        out.print(f"--- {log}")
        for line in tail(log):
            out.print(line, markup=False, highlight=False, soft_wrap=True)
