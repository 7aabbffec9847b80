"""`distrain launch --slurm`: render RUN_DIR/job.sbatch (slurm/sbatch.py, pure), write it, submit it."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys

from distrib.config import ConfigError, RunConfig, write_run_config
from distrib.files import write_atomic
from distrib.paths import RunPaths
from launch import console, topology, torchrun
from launch.run_local import write_launch_record
from slurm import cluster
from slurm.sbatch import SbatchJob, activate_line, render_sbatch
from slurm.submit import SlurmError, submit


def partition_for(cfg: RunConfig) -> cluster.Partition | None:
    """What SLURM says about the job's partition; a job's GPUs come from there, never from the login node.
    Without --gpus, a partition SLURM cannot describe here is refused in one line."""
    part = cluster.partition(cfg.partition)
    where = f"partition {cfg.partition}" if cfg.partition else "the default partition"
    if part is None and cfg.partition and shutil.which("sinfo"):
        raise ConfigError(f"--partition {cfg.partition}: SLURM here knows no such partition; see `sinfo -s` for "
                          "the partitions")
    if part is None and cfg.gpus is None:
        raise ConfigError(f"--slurm without --gpus: SLURM cannot be asked here (no sinfo) how many GPUs the nodes "
                          f"of {where} have; pass --gpus N (GPUs per node; --gpus 0 for CPU processes)")
    return part


def cpus_per_task(cfg: RunConfig, plan: topology.Plan, part: cluster.Partition | None) -> tuple[int | None, str]:
    """The CPUs each task asks for, and why, in words: --cpus-per-gpu, else the partition's DefCpuPerGPU
    (SLURM applies it itself), else what a rank and its --workers loader processes need, within a node."""
    srun_launch = cfg.launcher == "srun"
    tasks = plan.procs_per_node if srun_launch else 1
    if cfg.cpus_per_gpu:
        per_proc, why = cfg.cpus_per_gpu, f"--cpus-per-gpu {cfg.cpus_per_gpu}"
    elif part and part.def_cpu_per_gpu and plan.device == "cuda":
        return None, f"{part.def_cpu_per_gpu} CPU cores per GPU (partition {part.name}'s DefCpuPerGPU)"
    else:
        per_proc, why = cfg.workers + 1, f"--workers {cfg.workers} + 1 per process"
    want = per_proc * plan.procs_per_node // tasks
    per_task = min(want, max(1, part.cpus_per_node // tasks)) if part else want  # no node has more
    if per_task < want:
        why = f"all a node of partition {part.name} has; {why} would want {want * tasks}"
    return per_task, f"{per_task * tasks} CPU cores per node ({why}; --cpus-per-gpu N to change)"


def job_for(cfg: RunConfig, plan: topology.Plan, part: cluster.Partition | None = None) -> SbatchJob:
    return SbatchJob(
        run_dir=cfg.run_dir, job_name=f"distrain-{cfg.arch}", nodes=plan.max_nodes,
        gpus_per_node=plan.procs_per_node if plan.device == "cuda" else 0, procs_per_node=plan.procs_per_node,
        python=sys.executable, activate=activate_line(dict(os.environ)),
        rank_argv=("-m", "distrib", "train", RunPaths(cfg.run_dir).config),
        node_argv=tuple(torchrun.node_args(plan.procs_per_node, plan.device, cfg.max_restarts, cfg.run_dir)),
        endpoint_argv=tuple(torchrun.endpoint_args()),
        # the torchrun layout's node payload sets these itself, on each node (launch/node.py)
        env=tuple(torchrun.node_env(plan.device, RunPaths(cfg.run_dir), {}).items()) if cfg.launcher == "srun" else (),
        cpus_per_task=cpus_per_task(cfg, plan, part)[0], workdir=os.getcwd())


def summary(cfg: RunConfig, plan: topology.Plan, part: cluster.Partition | None) -> list[str]:
    """What the job will be, as a local dry run says it (on stderr: the script is alone on stdout)."""
    gpus = (f"{plan.procs_per_node} GPU(s) per node" + (" (from --gpus)" if cfg.gpus is not None else
            f" (partition {part.name}: its nodes have {part.gpus_per_node})")) if plan.device == "cuda" else \
        "no GPUs" + ("" if cfg.gpus is not None else f" (partition {part.name}: its nodes have none)")
    return [f"world size {plan.world_size}: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
            f"process(es), {gpus}",
            f"global batch {plan.global_batch} ({cfg.batch_size} per process), lr {plan.lr:g} "
            f"(= {cfg.lr:g} x {plan.global_batch}/256)",
            cpus_per_task(cfg, plan, part)[1]]


def launch(cfg: RunConfig, plan: topology.Plan, typed: list[str], dry_run: bool, out,
           part: cluster.Partition | None = None) -> int:
    if plan.min_nodes != plan.max_nodes:
        raise ConfigError(f"--nodes {cfg.nodes}: a SLURM job has a fixed node count; use --nodes {plan.max_nodes}")
    cfg = dataclasses.replace(cfg, run_dir=os.path.abspath(cfg.run_dir))  # the nodes see it from anywhere
    script = render_sbatch(cfg, job_for(cfg, plan, part))
    if dry_run:
        for line in summary(cfg, plan, part):
            console.err.print(f"# {line}", markup=False, highlight=False, soft_wrap=True)
        out.print(script, end="", markup=False, highlight=False, soft_wrap=True)
        return 0
    paths = RunPaths(cfg.run_dir)
    os.makedirs(paths.logs, exist_ok=True)  # slurmd opens --output before the script
    write_run_config(cfg, paths.config)
    script_path = paths.sbatch
    write_atomic(script_path, script)
    try:
        job_id = submit(script_path)
    except SlurmError as e:
        raise ConfigError(str(e)) from None
    write_launch_record(cfg.run_dir, {"distrain": typed, "mode": "slurm", "job_id": job_id,
                                      "world_size": plan.world_size, "nnodes": plan.nnodes,
                                      "procs_per_node": plan.procs_per_node, "script": script_path})
    log = paths.slurm_log(job_id)
    out.print(f"submitted job [bold]{job_id}[/]: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
              f"process(es) = world {plan.world_size}, global batch {plan.global_batch}, lr {plan.lr:g}; "
              f"{cpus_per_task(cfg, plan, part)[1]}", soft_wrap=True)
    out.print(f"  log:         {log}\n  status:      distrain status {cfg.run_dir}\n"
              f"  tensorboard: distrain tensorboard {os.path.dirname(cfg.run_dir)}", soft_wrap=True, markup=False)
    return 0


def array_spec(indices: list[int], parallel: int | None) -> str:
    """'0-3%2', '1,3': runs of consecutive indices joined, then the throttle."""
    runs, start = [], None
    for i, n in enumerate(indices):
        if start is None:
            start = n
        if i + 1 == len(indices) or indices[i + 1] != n + 1:
            runs.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(runs) + (f"%{parallel}" if parallel else "")


def submit_sweep(cfgs: list[RunConfig], todo: list[int], sweep_dir: str, typed: list[list[str]], plan: topology.Plan,
                 part: cluster.Partition | None, parallel: int | None, dry_run: bool, out) -> int:
    """The points `todo` (indices into cfgs) as one SLURM job array, or as several when the cluster's
    MaxArraySize is below the highest index (each array then covers a window of the points). Every run dir
    and log folder exists before sbatch runs; each point also gets its own job.sbatch, to resubmit alone."""
    from slurm.submit import max_array_size

    if plan.min_nodes != plan.max_nodes:
        raise ConfigError(f"--nodes {cfgs[0].nodes}: a SLURM job has a fixed node count; use --nodes {plan.max_nodes}")
    cfgs = [dataclasses.replace(c, run_dir=os.path.abspath(c.run_dir)) for c in cfgs]
    logs = os.path.join(os.path.abspath(sweep_dir), "logs")
    window = max_array_size() if not dry_run else max(len(cfgs), 1)
    template = dataclasses.replace(cfgs[0], run_dir="$RUN_DIR")
    for chunk in range(0, len(cfgs), window):
        mine = [i for i in todo if chunk <= i < chunk + window]
        if not mine:
            continue
        job = dataclasses.replace(job_for(template, plan, part), array_dirs=tuple(c.run_dir for c in
                                  cfgs[chunk:chunk + window]), array_spec=array_spec([i - chunk for i in mine],
                                  parallel), log_dir=logs)
        script = render_sbatch(template, job)
        if dry_run:
            out.print(script, end="", markup=False, highlight=False, soft_wrap=True)
            continue
        os.makedirs(logs, exist_ok=True)  # slurmd opens --output before the script: SLURM < 23.02 fails silently
        for i in mine:
            paths = RunPaths(cfgs[i].run_dir)
            os.makedirs(paths.logs, exist_ok=True)
            write_run_config(cfgs[i], paths.config)
            write_atomic(paths.sbatch, render_sbatch(cfgs[i], job_for(cfgs[i], plan, part)))
        script_path = os.path.join(os.path.abspath(sweep_dir), f"job-{chunk // window}.sbatch")
        write_atomic(script_path, script)
        try:
            job_id = submit(script_path)
        except SlurmError as e:
            raise ConfigError(str(e)) from None
        for i in mine:
            write_launch_record(cfgs[i].run_dir, {"distrain": typed[i], "mode": "slurm-array",
                                                  "job_id": f"{job_id}_{i - chunk}", "array_job": job_id,
                                                  "world_size": plan.world_size, "script": script_path})
        out.print(f"submitted array job [bold]{job_id}[/]: points {array_spec(mine, None)} "
                  f"({len(mine)} task(s){f', {parallel} at once' if parallel else ''}); logs {logs}/slurm-"
                  f"{job_id}_N.out", soft_wrap=True)
    return 0
