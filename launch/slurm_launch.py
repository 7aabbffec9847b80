"""`distrain launch --slurm`: render RUN_DIR/job.sbatch (slurm/sbatch.py, pure), write it, submit it."""

from __future__ import annotations

import dataclasses
import os
import sys

from distrib.config import ConfigError, RunConfig, write_run_config
from distrib.files import write_atomic
from distrib.paths import RunPaths
from launch import topology, torchrun
from launch.run_local import write_launch_record
from slurm.sbatch import SbatchJob, activate_line, render_sbatch
from slurm.submit import SlurmError, submit


def job_for(cfg: RunConfig, plan: topology.Plan) -> SbatchJob:
    return SbatchJob(
        run_dir=cfg.run_dir, job_name=f"distrain-{cfg.arch}", nodes=plan.max_nodes,
        gpus_per_node=plan.procs_per_node if plan.device == "cuda" else 0, procs_per_node=plan.procs_per_node,
        python=sys.executable, activate=activate_line(dict(os.environ)),
        rank_argv=("-m", "distrib", "train", RunPaths(cfg.run_dir).config),
        node_argv=tuple(torchrun.node_args(plan.procs_per_node, plan.device, cfg.max_restarts, cfg.run_dir)),
        endpoint_argv=tuple(torchrun.endpoint_args()),
        # the torchrun layout's node payload sets these itself, on each node (launch/node.py)
        env=tuple(torchrun.node_env(plan.device, RunPaths(cfg.run_dir), {}).items()) if cfg.launcher == "srun" else ())


def launch(cfg: RunConfig, plan: topology.Plan, typed: list[str], dry_run: bool, out) -> int:
    if plan.min_nodes != plan.max_nodes:
        raise ConfigError(f"--nodes {cfg.nodes}: a SLURM job has a fixed node count; use --nodes {plan.max_nodes}")
    cfg = dataclasses.replace(cfg, run_dir=os.path.abspath(cfg.run_dir))  # the nodes see it from anywhere
    script = render_sbatch(cfg, job_for(cfg, plan))
    if dry_run:
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
              f"process(es) = world {plan.world_size}, global batch {plan.global_batch}, lr {plan.lr:g}",
              soft_wrap=True)
    out.print(f"  log:         {log}\n  status:      distrain status {cfg.run_dir}\n"
              f"  tensorboard: distrain tensorboard {os.path.dirname(cfg.run_dir)}", soft_wrap=True, markup=False)
    return 0
