"""The sbatch script of a run: a pure function of the run config and the job's resolved topology.

    text = render_sbatch(cfg, SbatchJob(run_dir=..., nodes=2, gpus_per_node=8, procs_per_node=8, ...))

Two layouts (reference/launcher_anchors.md B.1, B.2):
  torchrun  one task per node; srun starts the node payload (launch/node.py) on every node, which finds its
            node's part in the c10d rendezvous on the first node and becomes that node's torchrun agent
  srun      one task per process; srun starts the ranks itself (they read SLURM_PROCID, SLURM_LOCALID)
The launcher hands both commands over as plain argv (SbatchJob.node_argv, endpoint_argv): the torchrun
flags and the port formula live in launch/torchrun.py alone.

Both end the same way: `--signal=B:USR1@N` reaches only the batch shell, whose trap touches RUN_DIR/STOP;
every rank polls that file, stops at a step boundary, rank 0 writes last.pt, and the shell requeues the job
(capped by SLURM_RESTART_COUNT < --max-requeues) so the next start resumes. SIGTERM (scancel) also touches
STOP, so the ranks checkpoint, but never requeues: a cancelled job stays cancelled.

User text reaches the script in exactly three ways: #SBATCH values, quoted for sbatch's own parser
(`_sbatch_word`); shell variables, quoted with shlex.quote and handed to per-node code as "$@"; and the
--setup lines, which are shell by design. Nothing here touches the file system or runs anything.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from distrib.config import ConfigError, RunConfig


@dataclass(frozen=True)
class SbatchJob:
    run_dir: str                 # absolute, on the shared filesystem
    job_name: str
    nodes: int                   # SLURM nodes
    gpus_per_node: int           # 0 on CPU runs
    procs_per_node: int          # processes per node (= gpus_per_node, or cfg.procs on CPU)
    python: str                  # sys.executable of the submitter
    activate: str | None         # a shell line, e.g. "source /x/venv/bin/activate"; None if none
    rank_argv: tuple[str, ...]   # what each rank runs after the interpreter: ("-m", "distrib", "train", CFG)
    node_argv: tuple[str, ...]   # torchrun layout: what each node runs after the interpreter (launch/node.py)
    endpoint_argv: tuple[str, ...]  # srun layout: after the interpreter, prints the job's rendezvous HOST:PORT
    env: tuple[tuple[str, str], ...] = ()  # what each node's ranks get unless the job's environment has it
    cpus_per_task: int | None = None  # None: SLURM's own default (e.g. the partition's DefCpuPerGPU)
    workdir: str | None = None   # where it was submitted from: the job runs there, whoever resubmits it
    array_dirs: tuple[str, ...] = ()  # a job array (distrain sweep): task i runs the run in array_dirs[i]
    array_spec: str | None = None     # which tasks, and how many at once: "0-3%2", "1,3"
    log_dir: str | None = None        # an array's logs (slurm-ARRAYJOB_TASK.out); else RUN_DIR/logs


def render_sbatch(cfg: RunConfig, job: SbatchJob) -> str:
    """The whole job script, of a validated cfg (RunConfig.validate); job values are checked here."""
    if "\n" in job.run_dir or "\\" in job.run_dir:
        raise ConfigError(f"run dir {job.run_dir!r} contains a line break or backslash; choose another --run-dir")
    srun_launch = cfg.launcher == "srun"
    procs = job.procs_per_node
    lines = ["#!/bin/bash"] + [f"#SBATCH {opt}" for opt in _directives(cfg, job, srun_launch)]
    lines += [
        "",
        ("# Written by `distrain sweep --slurm`: array task i runs the point in RUN_DIRS[i]; "
         if job.array_dirs else "# Written by `distrain launch --slurm`: ")
        + ("srun starts every rank." if srun_launch else "one torchrun agent per node."),
        "# B:USR1 before the time limit (or SIGTERM) makes the ranks checkpoint and stop; then the job requeues.",
        "set -euo pipefail",
        "",
        *([f"RUN_DIRS=({_words(job.array_dirs)})", 'RUN_DIR="${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}"']
          if job.array_dirs else [f"RUN_DIR={shlex.quote(job.run_dir)}"]),
        f"PYTHON={shlex.quote(job.python)}",
        f"RANK_ARGV=({_words(job.rank_argv)})" if srun_launch else f"NODE_ARGV=({_words(job.node_argv)})",
        f"MAX_REQUEUES={int(cfg.max_requeues)}",
        'export DISTRAIN_STOP_FILE="$RUN_DIR/STOP"',
        'rm -f "$DISTRAIN_STOP_FILE"  # a stop request belongs to the attempt that received it',
        "",
    ]
    setup = ([job.activate] if job.activate else []) + list(cfg.setup)
    if setup:
        # activation scripts and `module` often read unset variables
        lines += ["set +u", *setup, "set -u", ""]
    lines += [
        "# srun stopped inheriting --cpus-per-task in Slurm 22.05",
        'if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export SRUN_CPUS_PER_TASK="$SLURM_CPUS_PER_TASK"; fi',
        # srun's ranks: distrib/runtime/env.py omp_threads in shell (the node's cores shared by its processes, at
        # least 1; a value of your own wins). The torchrun layout's node payload calls omp_threads itself.
        *(['if [ -z "${OMP_NUM_THREADS:-}" ]; then',
           f"  OMP_NUM_THREADS=$(( ${{SLURM_CPUS_ON_NODE:-1}} / {procs} ))",
           "  export OMP_NUM_THREADS=$(( OMP_NUM_THREADS > 0 ? OMP_NUM_THREADS : 1 ))",
           "fi"] if srun_launch else []),
        "export PYTHONUNBUFFERED=1",
        *(["# Flight Recorder: a collective that times out leaves a trace (a value of your own wins)"]
          + [f'[ -n "${{{k}+x}}" ] || export {k}={shlex.quote(v)}' for k, v in job.env] if job.env else []),
        *(_endpoint(job.endpoint_argv) if srun_launch else []),
        "",
        "# B:USR1 (time limit near, or `scancel --signal=USR1 --batch`) asks for checkpoint, stop and requeue;",
        "# SIGTERM (scancel) for checkpoint and stop only: requeueing it would undo the user's scancel.",
        "# A trap does not run while a foreground command runs, but it does interrupt `wait`: hence srun",
        "# in the background and a loop until it has really ended.",
        "REQUEUE=0",
        "trap 'REQUEUE=1; touch \"$DISTRAIN_STOP_FILE\" || true' USR1",
        "trap 'touch \"$DISTRAIN_STOP_FILE\" || true' TERM",
    ]
    lines += _srun_ranks(procs) if srun_launch else _srun_torchrun()
    lines += _wait_and_requeue()
    return "\n".join(lines) + "\n"


def _directives(cfg: RunConfig, job: SbatchJob, srun_launch: bool) -> list[str]:
    procs = job.procs_per_node
    out = [f"--job-name={_sbatch_word(job.job_name)}", f"--nodes={job.nodes}",
           f"--ntasks-per-node={procs if srun_launch else 1}"]
    if job.gpus_per_node:
        out.append(f"--gpus-per-node={job.gpus_per_node}" if cfg.gpu_directive == "gpus-per-node"
                   else f"--gres=gpu:{job.gpus_per_node}")
    if job.workdir:
        out.append(f"--chdir={_sbatch_word(job.workdir)}")
    if job.cpus_per_task:
        out.append(f"--cpus-per-task={job.cpus_per_task}")
    for name in ("mem", "time", "partition", "account", "qos"):
        if getattr(cfg, name) is not None:
            out.append(f"--{name}={_sbatch_word(getattr(cfg, name))}")
    if cfg.exclusive:
        out.append("--exclusive")
    if job.array_spec:
        out.append(f"--array={job.array_spec}")
    # % starts a filename pattern in --output; %% is a literal %
    log = ((job.log_dir or "").replace("%", "%%").rstrip("/") + "/slurm-%A_%a.out" if job.array_dirs else
           job.run_dir.replace("%", "%%").rstrip("/") + "/logs/slurm-%j.out")
    out += [f"--output={_sbatch_word(log)}", "--open-mode=append", "--requeue",
            f"--signal=B:USR1@{int(cfg.signal_seconds)}"]
    return out + [_sbatch_word(a) for a in cfg.sbatch_arg]


def _srun_torchrun() -> list[str]:
    return [
        "",
        "# One torchrun agent per node: the payload finds, on its node, whether the node hosts the rendezvous store",
        "# (the job's first node), its own address toward it and the interface, then becomes that node's torchrun.",
        'srun --kill-on-bad-exit=1 --wait=60 --label "$PYTHON" "${NODE_ARGV[@]}" &',
    ]


def _endpoint(endpoint_argv: tuple[str, ...]) -> list[str]:
    return [
        "",
        "# rendezvous on the first node, on a port derived from the job id (stable across requeues)",
        f'ENDPOINT=$("$PYTHON" {_words(endpoint_argv)})',
        'MASTER_ADDR=${ENDPOINT%:*}',
        'MASTER_PORT=${ENDPOINT##*:}',
    ]


def _words(argv: tuple[str, ...]) -> str:
    """Shell words; one that starts with $RUN_DIR (an array task's run dir) is expanded, in double quotes."""
    return " ".join(f'"{a}"' if a.startswith("$RUN_DIR") else shlex.quote(a) for a in argv)


def _srun_ranks(procs: int) -> list[str]:
    return [
        "",
        "export MASTER_ADDR MASTER_PORT",
        f"# One task per process ({procs} per node); each rank reads SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS.",
        'srun --kill-on-bad-exit=1 --wait=60 --label "$PYTHON" -u "${RANK_ARGV[@]}" &',
    ]


def _wait_and_requeue() -> list[str]:
    return [
        "SRUN_PID=$!",
        'while kill -0 "$SRUN_PID" 2>/dev/null; do wait "$SRUN_PID" || true; done',
        'rc=0; wait "$SRUN_PID" || rc=$?',
        "",
        'if [ "$REQUEUE" = 1 ] && [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then',
        '  rm -f "$DISTRAIN_STOP_FILE"',
        '  echo "distrain: stopped (exit $rc) on USR1; requeueing $SLURM_JOB_ID" \\',
        '    "(restart $(( ${SLURM_RESTART_COUNT:-0} + 1 )) of $MAX_REQUEUES)" >&2',
        '  if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi',
        '  echo "distrain: scontrol requeue $SLURM_JOB_ID failed; resubmit $RUN_DIR/job.sbatch to resume" >&2',
        'elif [ "$REQUEUE" = 1 ]; then',
        '  echo "distrain: not requeueing: $MAX_REQUEUES requeues done (--max-requeues);" \\',
        '    "resubmit $RUN_DIR/job.sbatch to resume" >&2',
        "fi",
        'exit "$rc"',
    ]


def _sbatch_word(value: str) -> str:
    """One argument as sbatch's #SBATCH parser reads it: quotes group, backslash escapes, # starts a comment.

    (sbatch/opt.c `_get_argument`; single quotes do not protect a backslash there, so shlex.quote won't do.)
    """
    if re.fullmatch(r"[\w.,:+@/%=-]+", value, re.ASCII):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def activate_line(environ: dict[str, str]) -> str | None:
    """The shell line that re-activates the submitter's virtualenv on the nodes, if any.

    sbatch exports the submitter's environment, but activating again also restores PATH (and conda's
    activation scripts) on nodes whose login shells reset them; the ranks run the absolute python anyway.
    """
    venv = environ.get("VIRTUAL_ENV")
    if venv:
        return f"source {shlex.quote(venv.rstrip('/') + '/bin/activate')}"
    conda = environ.get("CONDA_PREFIX")
    if conda:
        return f'eval "$(conda shell.bash hook)" && conda activate {shlex.quote(conda)}'
    return None
