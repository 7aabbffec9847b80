"""`distrain launch --slurm` against the real two-node SLURM cluster of tests/slurm/cluster.sh.

Skipped when the cluster is not up, unless DISTRAIN_REQUIRE_SLURM=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_ok, distrain, metrics, rank_pids
from slurm_cluster import cluster_available, job_restarts, wait_job

from slurm.submit import job_state

VAL_IMAGES = 29

if not cluster_available():
    if os.environ.get("DISTRAIN_REQUIRE_SLURM") == "1":
        raise RuntimeError("SLURM cluster is not up: run `bash tests/slurm/cluster.sh up`")
    pytest.skip("no local SLURM cluster (bash tests/slurm/cluster.sh up)", allow_module_level=True)

pytestmark = pytest.mark.slurm


def submit(*args) -> tuple[str, subprocess.CompletedProcess]:
    proc = distrain("launch", "--slurm", *args)
    assert_ok(proc)
    match = re.search(r"submitted job (\d+)", proc.stdout)
    assert match, proc.all
    return match.group(1), proc


def slurm_log(run_dir: Path, job_id: str) -> str:
    path = run_dir / "logs" / f"slurm-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


def test_two_node_job_completes_with_exact_validation(imagefolder, tmp_path):
    run_dir = tmp_path / "slurm two nodes"  # a space on purpose: every value is quoted
    job, proc = submit("--nodes", "2", "--gpus", "0", "--procs", "1", "--data", imagefolder, "--epochs", "1",
                       "--run-dir", run_dir, "--time", "10:00", "--signal-seconds", "60", *TINY)
    assert f"distrain status {run_dir}" in proc.stdout
    assert (run_dir / "job.sbatch").exists()
    assert wait_job(job, timeout=300) == "COMPLETED", slurm_log(run_dir, job)
    rows = metrics(run_dir)
    assert len(rows) == 1 and rows[0]["world_size"] == 2 and rows[0]["val_samples"] == VAL_IMAGES
    status = distrain("status", run_dir)
    assert_ok(status)
    assert f"SLURM job {job}: COMPLETED" in status.stdout and "finished, 1 of 1 epochs done" in status.stdout


def test_srun_launcher_without_torchrun(imagefolder, tmp_path):
    run_dir = tmp_path / "srun"
    job, _ = submit("--launcher", "srun", "--nodes", "2", "--gpus", "0", "--procs", "1", "--data", imagefolder,
                    "--epochs", "1", "--steps-per-epoch", "2", "--run-dir", run_dir, *TINY)
    assert wait_job(job, timeout=300) == "COMPLETED", slurm_log(run_dir, job)
    rows = metrics(run_dir)
    assert rows[0]["world_size"] == 2 and rows[0]["val_samples"] == VAL_IMAGES


def test_preempted_job_checkpoints_requeues_and_resumes(two_rank_run, imagefolder, tmp_path):
    """USR1 as SLURM sends it before a time limit: stop at a step, last.pt, requeue, resume, finish."""
    run_dir = tmp_path / "preempted"
    job, _ = submit("--nodes", "2", "--gpus", "0", "--procs", "1", "--data", imagefolder, "--epochs", "3",
                    "--run-dir", run_dir, "--max-requeues", "2", *TINY)
    deadline = time.monotonic() + 240
    while not metrics(run_dir) and time.monotonic() < deadline:
        assert job_state(job) not in ("FAILED", "CANCELLED", "COMPLETED"), slurm_log(run_dir, job)
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    lines = []
    while time.monotonic() < deadline:  # the squeue lines a user would see
        line = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%i %T %r"], capture_output=True,
                              text=True).stdout.strip()
        if not lines or lines[-1] != line:
            lines.append(line)
        if "PENDING" in line:
            break
        time.sleep(0.2)
    assert any("PENDING" in line for line in lines), (lines, slurm_log(run_dir, job))
    assert wait_job(job, timeout=300) == "COMPLETED", slurm_log(run_dir, job)
    assert job_restarts(job) == 1
    log = slurm_log(run_dir, job)
    assert "requeueing" in log, log
    rows = metrics(run_dir)
    assert [r["epoch"] for r in rows] == [0, 1, 2], rows  # nothing trained twice, nothing missed
    for resumed, straight in zip(rows, metrics(two_rank_run)):  # same seed, world size 2, step schedule
        for key in ("train_loss", "val_loss", "val_acc1", "val_samples"):
            assert resumed[key] == pytest.approx(straight[key], rel=1e-5), (key, resumed, straight)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 * 3  # 3 epochs of 3 steps: no step redone, none skipped
    assert "resumed from" in (run_dir / "logs" / "rank0.log").read_text()


def test_failing_rank_ends_the_whole_job(imagefolder, tmp_path):
    """One node's training process dies: srun --kill-on-bad-exit ends the job, no hang, error in the log."""
    run_dir = tmp_path / "failing"
    job, _ = submit("--nodes", "2", "--gpus", "0", "--procs", "1", "--data", imagefolder, "--epochs", "50",
                    "--run-dir", run_dir, *TINY)
    config = run_dir / "config.toml"
    deadline, victim = time.monotonic() + 240, None
    while victim is None and time.monotonic() < deadline:
        victim = rank_pids(config).get(1) if metrics(run_dir) else None
        time.sleep(0.2)
    assert victim, slurm_log(run_dir, job)
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    state = wait_job(job, timeout=180, release=False)
    assert state in ("FAILED", "CANCELLED"), state
    assert time.monotonic() - started < 150  # the other node did not wait for a collective forever
    log = slurm_log(run_dir, job)
    assert "Signal 9 (SIGKILL) received by PID" in log, log[-3000:]  # torchrun's report of that rank
    assert len(metrics(run_dir)) < 50


def test_launch_inside_salloc_starts_one_torchrun_per_node(imagefolder, tmp_path):
    """In an salloc shell, `distrain launch` itself uses srun to start one torchrun per allocated node."""
    run_dir = tmp_path / "salloc"
    proc = subprocess.run(["salloc", "-N2", "--ntasks-per-node=1", sys.executable, "-m", "launch", "launch",
                           "--gpus", "0", "--procs", "1", "--data", str(imagefolder), "--epochs", "1",
                           "--steps-per-epoch", "2", "--run-dir", str(run_dir), *map(str, TINY)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "distrain salloc: 2 node(s) x 1 cpu process(es) = world 2" in proc.stdout
    rows = metrics(run_dir)
    assert rows[0]["world_size"] == 2 and rows[0]["val_samples"] == VAL_IMAGES
