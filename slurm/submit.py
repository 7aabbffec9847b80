"""The thin shell around sbatch and squeue: submit a written script, ask what became of a job.

    job_id = submit("/shared/runs/r1/job.sbatch")   # "12345"
    job_state(job_id)                                # "PENDING", "RUNNING", "COMPLETED", ... or None
"""

from __future__ import annotations

import os
import subprocess


class SlurmError(RuntimeError):
    """sbatch is missing or refused the job; the message is one line and includes sbatch's own words."""


# Variables of an enclosing allocation (salloc, srun, a job that submits a job) that would leak into the
# new job and silently change it: e.g. SLURM_CPU_BIND, SBATCH_* defaults (submitit#1699, goodfire-ai/spd#955).
_LEAKY_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PMI_", "PMIX_")
_KEEP = ("SLURM_CONF",)


def submission_env(environ: dict[str, str]) -> dict[str, str]:
    """The environment sbatch should see: ours, minus what an enclosing allocation put there."""
    return {k: v for k, v in environ.items() if k in _KEEP or not k.startswith(_LEAKY_PREFIXES)}


def submit(script_path: str) -> str:
    """Submit with `sbatch --parsable` and return the job id (without a ';cluster' suffix)."""
    try:
        done = subprocess.run(["sbatch", "--parsable", script_path], capture_output=True, text=True,
                              env=submission_env(dict(os.environ)), timeout=120)
    except FileNotFoundError:
        raise SlurmError("sbatch not found on PATH: run this on a SLURM login node, or use --dry-run to "
                         "print the script") from None
    except subprocess.TimeoutExpired:
        raise SlurmError("sbatch did not answer within 120 s; is slurmctld reachable (try `sinfo`)?") from None
    if done.returncode != 0:
        why = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        raise SlurmError(f"sbatch refused {script_path}: {why}")
    job_id = done.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch --parsable printed {done.stdout.strip()!r}, not a job id")
    return job_id


def job_state(job_id: str) -> str | None:
    """The job's state from squeue (which keeps finished jobs for MinJobAge), else sacct, else None."""
    out = _ask(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"])
    if out:
        return out.split()[0]
    out = _ask(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"])  # absent without accounting
    if out:
        return out.splitlines()[-1].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
    return None


def _ask(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def max_array_size() -> int:
    """The cluster's MaxArraySize (an array index must be below it); SLURM's default 1001 when unknown."""
    for line in _ask(["scontrol", "show", "config"]).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return 1001
