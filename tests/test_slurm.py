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
from conftest import TINY, WITH_WORKERS, assert_ok, distrain, metrics, rank_pids
from slurm_cluster import cluster_available, job_restarts, release_if_pending, wait_job

from distrib.words import position_words
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
                       "--run-dir", run_dir, "--time", "10:00", "--signal-seconds", "60", *TINY,
                       *WITH_WORKERS,  # a SLURM job's ranks with loader workers (a fork server each)
                       "--partition", "debug", "--account", "vision", "--qos", "normal", "--exclusive",
                       "--mem", "1500M", "--sbatch-arg=--comment=two nodes, one world",
                       "--setup", "echo setup ran on $SLURM_JOB_NODELIST", "--setup", f"distrain index {imagefolder}")
    assert f"distrain status {run_dir}" in proc.stdout
    assert (run_dir / "job.sbatch").exists()
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    assert "Partition=debug" in shown and "Account=vision" in shown and "QOS=normal" in shown, shown
    assert "OverSubscribe=NO" in shown, shown
    assert "MinMemoryNode=1500M" in shown and "Comment=two nodes, one world" in shown, shown  # --mem, --sbatch-arg
    assert wait_job(job, timeout=300) == "COMPLETED", slurm_log(run_dir, job)
    assert "setup ran on n[1-2]" in slurm_log(run_dir, job)  # --setup: in the batch shell, before the launch
    assert f"index of {imagefolder}: 8 classes, train 96, val 29 images" in slurm_log(run_dir, job)  # as README's
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


# The exact-resume runs on the cluster: 96 train images, batch 4 x world 2 = 12 steps an epoch, so a stop can
# land mid-epoch, and a progress line every step shows where training is.
EXACT = ["--nodes", "2", "--gpus", "0", "--procs", "1", "--epochs", "2", "--arch", "resnet18", "--image-size", "32",
         "--batch-size", "4", "--workers", "0", "--lr", "0.2", "--seed", "0", "--log-interval", "1"]
STEPS = 12
STEP_LINE = re.compile(r"epoch (\d+) step (\d+)/(\d+)")
COMPARED = ("train_loss", "val_loss", "val_acc1", "val_acc5", "val_samples", "lr", "world_size")


@pytest.fixture(scope="module")
def straight_run(imagefolder, tmp_path_factory) -> Path:
    """The uninterrupted run the interrupted ones must match: the same options, on the same cluster."""
    run_dir = tmp_path_factory.mktemp("slurm") / "straight"
    job, _ = submit(*EXACT, "--data", imagefolder, "--run-dir", run_dir)
    assert wait_job(job, timeout=300) == "COMPLETED", slurm_log(run_dir, job)
    assert [r["epoch"] for r in metrics(run_dir)] == [0, 1]
    return run_dir


def wait_mid_epoch(run_dir: Path, job: str, attempt: int = 0, timeout: float = 240) -> tuple[int, int]:
    """Poll rank 0's log until this attempt (0: the first, n: after the n-th resume) is a few steps into an
    epoch with steps to spare, so that a stop asked now lands mid-epoch; (epoch 1-based, step) seen."""
    log = run_dir / "logs" / "rank0.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        parts = text.split("resumed from")
        seen = STEP_LINE.findall(parts[attempt]) if len(parts) == attempt + 1 else []
        if seen and 1 <= int(seen[-1][1]) <= STEPS - 6:
            return int(seen[-1][0]), int(seen[-1][1])
        state = job_state(job)
        assert state not in ("FAILED", "CANCELLED", "COMPLETED"), (state, slurm_log(run_dir, job))
        time.sleep(0.05)
    raise TimeoutError(f"job {job} never reached the middle of an epoch: {slurm_log(run_dir, job)[-3000:]}")


def assert_matches_straight(run_dir: Path, request) -> None:
    """Every epoch as the uninterrupted run's (asked for only now: a test that fails earlier need not wait for it)."""
    rows, want = metrics(run_dir), metrics(request.getfixturevalue("straight_run"))
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in want] == [0, 1], rows  # none twice, none missed
    for got, ref in zip(rows, want):
        for key in COMPARED:
            assert got[key] == pytest.approx(ref[key], rel=1e-6), (key, got, ref)


def assert_stopped_mid_epoch(run_dir: Path, asked_at: tuple[int, int]) -> dict:
    """last.pt was written at a step boundary inside an epoch, at or after the step the stop was asked at."""
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert 0 < ckpt["batch"] < STEPS and ckpt["step"] == ckpt["epoch"] * STEPS + ckpt["batch"], \
        {k: ckpt[k] for k in ("epoch", "batch", "step")}
    assert (ckpt["epoch"] + 1, ckpt["batch"]) >= asked_at
    return ckpt


def resumed_at(run_dir: Path, ckpt: dict) -> None:
    log = (run_dir / "logs" / "rank0.log").read_text()
    where = position_words(ckpt["epoch"], ckpt["batch"], None)
    assert re.search(rf"resumed from \S*last\.pt at {re.escape(where)}$", log, re.MULTILINE), log[-3000:]
    # the first step trained after the resume is the one after the checkpoint's
    after = STEP_LINE.findall(log.split("resumed from")[-1])
    assert after and (int(after[0][0]), int(after[0][1])) == (ckpt["epoch"] + 1, ckpt["batch"] + 1), after[:3]


def test_scancel_checkpoints_mid_epoch_stays_cancelled_and_the_same_command_resumes(request, imagefolder, tmp_path):
    """A plain scancel (SIGTERM) with real training ranks: they stop at a step boundary and rank 0 writes
    last.pt before SLURM's KillWait; the job stays CANCELLED (no requeue); `distrain status` says stopped and
    where; the same launch command resumes at that step and ends with the uninterrupted run's metrics."""
    run_dir = tmp_path / "cancelled"
    command = (*EXACT, "--data", imagefolder, "--run-dir", run_dir, "--max-requeues", "3")
    job, _ = submit(*command)
    asked_at = wait_mid_epoch(run_dir, job)
    subprocess.run(["scancel", job], check=True)
    assert wait_job(job, timeout=120, release=False) == "CANCELLED", slurm_log(run_dir, job)
    assert job_restarts(job) == 0
    ckpt = assert_stopped_mid_epoch(run_dir, asked_at)
    assert "stopped at" in (run_dir / "logs" / "rank0.log").read_text()  # the rank's own clean stop
    assert "requeueing" not in slurm_log(run_dir, job)
    status = distrain("status", run_dir)
    assert_ok(status)
    where = position_words(ckpt["epoch"], ckpt["batch"], STEPS)
    assert f"{run_dir}: stopped, {ckpt['epoch']} of 2 epochs done, last.pt at {where}; SLURM job {job}: CANCELLED" \
        in status.stdout, status.stdout
    assert_status_from_sacct_once_squeue_forgets(run_dir, job, "CANCELLED", tmp_path)
    again, _ = submit(*command)
    assert again != job
    assert wait_job(again, timeout=300) == "COMPLETED", slurm_log(run_dir, again)
    resumed_at(run_dir, ckpt)
    assert_matches_straight(run_dir, request)


def assert_status_from_sacct_once_squeue_forgets(run_dir: Path, job: str, state: str, tmp_path: Path) -> None:
    """`distrain status` after slurmctld has purged the job (MinJobAge): the state comes from the real sacct
    (slurmdbd and MariaDB of cluster.sh). squeue is made to answer as it does for a purged job; the cluster's
    MinJobAge (600 s, which the other tests read final states within) is not waited out."""
    deadline = time.monotonic() + 30  # slurmdbd records the job's end a moment after slurmctld
    while time.monotonic() < deadline:
        done = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "State"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr  # accounting is on (cluster.sh)
        if done.stdout.strip().startswith(state):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"sacct never said {state} for job {job}: {done.stdout!r}")
    shims = tmp_path / "purged-squeue"
    shims.mkdir()
    asked = shims / "asked"
    (shims / "squeue").write_text(f"#!/bin/bash\necho \"$*\" >>{asked}\n"
                                  "echo 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n")
    (shims / "squeue").chmod(0o755)
    status = distrain("status", run_dir, env={"PATH": f"{shims}:{os.environ['PATH']}"})
    assert_ok(status)
    assert asked.exists(), "status did not ask squeue"
    assert f"SLURM job {job}: {state}" in status.stdout, status.stdout


def test_the_time_limit_warning_stops_the_run_at_a_step_before_slurm_ends_the_job(imagefolder, tmp_path):
    """No signal sent by the test: SLURM's own USR1, --signal-seconds 70 before a --time of 2 minutes (slurmctld
    checks time limits every 30 s, so it comes 20-50 s into the job), stops the run at a step boundary with
    last.pt; at --max-requeues 0 the job says why it does not requeue and ends COMPLETED, not TIMEOUT."""
    run_dir = tmp_path / "time-limit"
    job, _ = submit("--nodes", "1", "--gpus", "0", "--procs", "1", "--data", imagefolder, "--epochs", "200",
                    "--run-dir", run_dir, *TINY, "--time", "2:00", "--signal-seconds", "70", "--max-requeues", "0")
    assert "#SBATCH --signal=B:USR1@70" in (run_dir / "job.sbatch").read_text()
    assert wait_job(job, timeout=150, release=False) == "COMPLETED", slurm_log(run_dir, job)
    log = slurm_log(run_dir, job)
    assert "not requeueing: 0 requeues done (--max-requeues)" in log and job_restarts(job) == 0, log[-3000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    rank0 = (run_dir / "logs" / "rank0.log").read_text()  # a stop within an epoch, or at its end (6 short steps)
    assert 0 < ckpt["step"] < 200 * 6 and re.search(r"stopped (at |after epoch )", rank0), rank0[-2000:]
    elapsed = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "ElapsedRaw"], capture_output=True,
                             text=True).stdout.split()
    assert elapsed and int(elapsed[0]) < 120, elapsed  # ended by the warning, well before the limit


def test_sigterm_to_the_batch_shell_alone_stops_the_ranks_at_a_step(imagefolder, tmp_path):
    """SIGTERM that reaches only the batch script (`scancel --signal=TERM --batch`, as some preemption setups
    send it): the script's TERM trap asks the ranks to stop, they write last.pt at a step boundary, nothing is
    requeued, and `distrain status` says stopped."""
    run_dir = tmp_path / "term-batch"
    job, _ = submit(*EXACT, "--data", imagefolder, "--run-dir", run_dir, "--max-requeues", "3")
    asked_at = wait_mid_epoch(run_dir, job)
    subprocess.run(["scancel", "--signal=TERM", "--batch", job], check=True)
    state = wait_job(job, timeout=120, release=False)
    log = slurm_log(run_dir, job)
    assert state == "COMPLETED" and job_restarts(job) == 0 and "requeueing" not in log, (state, log)
    ckpt = assert_stopped_mid_epoch(run_dir, asked_at)
    assert "stopped at" in (run_dir / "logs" / "rank0.log").read_text()  # the rank's own clean stop
    status = distrain("status", run_dir)
    where = position_words(ckpt["epoch"], ckpt["batch"], STEPS)
    assert f"{run_dir}: stopped, {ckpt['epoch']} of 2 epochs done, last.pt at {where}" in status.stdout, status.all


def test_preempted_job_requeues_up_to_the_cap_and_its_job_sbatch_resumes_exactly(request, imagefolder, tmp_path):
    """USR1 as SLURM sends it before a time limit, with --max-requeues 1. The first preemption: stop mid-epoch at
    a step, last.pt, requeue, resume at that step. The second: the cap is reached, the job stops with last.pt
    and says why; `distrain status` says stopped, not requeued. Resubmitting RUN_DIR/job.sbatch from another
    folder resumes at that step, and every epoch equals the uninterrupted run's (rel 1e-6)."""
    run_dir = tmp_path / "preempted"
    job, _ = submit(*EXACT, "--data", imagefolder, "--run-dir", run_dir, "--max-requeues", "1")
    asked_at = wait_mid_epoch(run_dir, job)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    deadline = time.monotonic() + 120
    while job_restarts(job) == 0 or not release_if_pending(job):  # requeued: start it now, not in ~2 min
        assert time.monotonic() < deadline, (job_state(job), slurm_log(run_dir, job))
        time.sleep(0.2)
    first = assert_stopped_mid_epoch(run_dir, asked_at)  # written before the job was requeued
    asked_at = wait_mid_epoch(run_dir, job, attempt=1)
    resumed_at(run_dir, first)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    state = wait_job(job, timeout=120, release=False)
    log = slurm_log(run_dir, job)
    assert job_restarts(job) == 1 and state in ("COMPLETED", "FAILED"), (state, log[-3000:])  # not requeued
    assert log.count(f"requeueing {job} (restart") == 1, log[-3000:]  # the first preemption only
    assert (f"distrain: not requeueing: 1 requeues done (--max-requeues); resubmit {run_dir}/job.sbatch to resume"
            in log), log[-3000:]
    second = assert_stopped_mid_epoch(run_dir, asked_at)
    status = distrain("status", run_dir)
    assert_ok(status)
    where = position_words(second["epoch"], second["batch"], STEPS)
    assert f"{run_dir}: stopped, {second['epoch']} of 2 epochs done, last.pt at {where}; SLURM job {job}: {state}" \
        in status.stdout, status.stdout
    assert "not requeueing: 1 requeues done" in status.stdout  # the log's tail, shown by status

    elsewhere = tmp_path / "elsewhere"  # job.sbatch runs where it was first submitted from (--chdir)
    elsewhere.mkdir()
    sbatch = subprocess.run(["sbatch", run_dir / "job.sbatch"], cwd=elsewhere, capture_output=True, text=True)
    assert sbatch.returncode == 0, sbatch.stderr
    again = re.search(r"Submitted batch job (\d+)", sbatch.stdout).group(1)
    assert wait_job(again, timeout=300) == "COMPLETED", slurm_log(run_dir, again)
    resumed_at(run_dir, second)
    assert_matches_straight(run_dir, request)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 2 * STEPS


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
