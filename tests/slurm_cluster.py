"""Helpers for tests that use the real two-node SLURM cluster of tests/slurm/cluster.sh (n1, n2 on this host).

    pytestmark = pytest.mark.skipif(not cluster_available(), reason="no SLURM cluster: bash tests/slurm/cluster.sh up")
    state = wait_job(job_id, timeout=120)   # releases requeued jobs at once, returns e.g. "COMPLETED"
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time

from slurm.submit import job_state

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE"}
_USABLE = {"idle", "mix", "mixed", "alloc", "allocated", "comp", "completing"}


def _run(*argv: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 127, "", str(e))


def _controller_listening() -> bool:
    """A cheap probe first: with slurmctld down, sinfo retries for ~10 s before it gives up."""
    try:
        with open(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")) as fh:
            conf = fh.read()
    except OSError:
        return False
    host = re.search(r"^SlurmctldHost=([^\s(]+)", conf, re.M | re.I)
    port = re.search(r"^SlurmctldPort=(\d+)", conf, re.M | re.I)
    try:
        socket.create_connection((host.group(1) if host else "localhost", int(port.group(1)) if port else 6817),
                                 timeout=2).close()
        return True
    except OSError:
        return False


def cluster_available() -> bool:
    """slurmctld answers and both nodes can run jobs (idle, or busy with an earlier test's job)."""
    if not _controller_listening():
        return False
    done = _run("sinfo", "-h", "-N", "-o", "%N %t")
    if done.returncode != 0:
        return False
    states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
    return all(states.get(node, "").rstrip("*~#!%$@^-") in _USABLE for node in ("n1", "n2"))


def _pending_on_begin_time(job_id: str) -> bool:
    return _run("squeue", "-h", "-j", str(job_id), "-o", "%T %r").stdout.split() == ["PENDING", "BeginTime"]


def release_if_pending(job_id: str, settle: float = 2.0) -> bool:
    """A requeued job waits on its BeginTime (~2 min); start it now. True if it was released.

    Not within the requeue's own second: slurmd rejects a credential issued in the second its predecessor
    was revoked ("Killing non-startable batch job: Job credential revoked", and the job ends FAILED).
    """
    if not _pending_on_begin_time(job_id):
        return False
    time.sleep(settle)
    if not _pending_on_begin_time(job_id):
        return False
    return _run("scontrol", "update", f"jobid={job_id}", "StartTime=now").returncode == 0


def job_restarts(job_id: str) -> int:
    """How many times the job was requeued (SLURM_RESTART_COUNT of its current run)."""
    out = _run("scontrol", "show", "job", str(job_id)).stdout
    for word in out.split():
        if word.startswith("Restarts="):
            return int(word.partition("=")[2])
    raise LookupError(f"scontrol show job {job_id} has no Restarts= field: {out.strip()!r}")


def wait_job(job_id: str, timeout: float, release: bool = True) -> str:
    """Poll until the job is in a final state and return it; release requeued jobs unless release=False."""
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        if release:
            release_if_pending(job_id)
        state = job_state(job_id)
        if state in FINAL_STATES:
            return state
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {state} after {timeout:.0f} s; see `scontrol show job {job_id}`")
