"""From a resolved config to running processes: cheap checks, config.toml, then torchrun, srun or sbatch."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from distrib.data import workers
from distrib.config import ConfigError, RunConfig, write_run_config
from launch import preflight, topology
from launch.run_local import run, write_launch_record

STOPPED_EXIT = 3  # stopped on request before the last epoch; the same command resumes


def launch(cfg: RunConfig, typed: list[str], dry_run: bool, out, warn) -> int:
    """`typed` is the user's own `distrain launch ...` line: what every node runs, kept in launch.json."""
    cfg.validate()
    plan = topology.make_plan(cfg, topology.visible_gpus(), topology.allocation_nodes())
    # A dry run is often prepared for another machine: what it cannot see from here is only a warning.
    problems = preflight.cheap_checks(cfg, plan, here=not dry_run)
    fatal = [p for p in problems if not p.warning]
    if fatal and not dry_run:
        raise ConfigError(fatal[0].message)
    for p in problems:
        warn(p.message)
    config_path = os.path.join(cfg.run_dir, "config.toml")
    if cfg.slurm:
        from launch import slurm_launch

        return slurm_launch.launch(cfg, plan, typed, dry_run, out)
    argv = _node_argv(plan, cfg, config_path)
    if dry_run:
        out.print(describe(plan, cfg, argv, typed), soft_wrap=True, markup=False)
        return 0
    write_run_config(cfg, config_path)
    write_launch_record(cfg.run_dir, {"distrain": typed, "mode": plan.mode, "world_size": plan.world_size,
                                      "command": argv, "nnodes": plan.nnodes, "procs_per_node": plan.procs_per_node})
    out.print(_headline(plan, cfg), soft_wrap=True)
    return run_here(cfg, plan, argv, out)


def run_here(cfg: RunConfig, plan: topology.Plan, argv: list[str], out) -> int:
    """Run this node's torchrun to the end; a stop request ends it at a step boundary with last.pt written."""
    stop_file = os.path.join(cfg.run_dir, "STOP")
    _remove(stop_file)  # a stop request belongs to the run that received it
    code, signalled = run(argv, _rank_environment(plan), stop_file, say=lambda m: out.print(f"[yellow]{m}[/]"))
    stopped = os.path.exists(stop_file)
    _remove(stop_file)
    if code == 0 and (signalled or stopped):
        out.print(f"[yellow]stopped[/] by {signalled or stop_file}: last.pt is in {cfg.run_dir}/checkpoints; "
                  "run the same command to resume.", soft_wrap=True)
        return {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}.get(signalled, STOPPED_EXIT)
    if code != 0:
        out.print(f"[red]run failed[/] (torchrun exit {code}); per-rank logs are in {cfg.run_dir}/logs",
                  soft_wrap=True)
        return 1
    return 0


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _node_argv(plan: topology.Plan, cfg: RunConfig, config_path: str) -> list[str]:
    if plan.mode == "salloc":
        env = os.environ
        head = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True,
                              text=True, check=True).stdout.split()[0]
        return topology.salloc_argv(plan, cfg, sys.executable, config_path, head, env["SLURM_JOB_ID"])
    return topology.torchrun_argv(plan, cfg, sys.executable, config_path)


def _rank_environment(plan: topology.Plan) -> dict:
    env = dict(os.environ)
    if plan.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --gpus 0 means CPU even on a GPU machine
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(plan.procs_per_node, 1))))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _headline(plan: topology.Plan, cfg: RunConfig) -> str:
    return (f"[bold]distrain[/] {plan.mode}: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
            f"process(es) = world {plan.world_size}, global batch {plan.global_batch}, lr {plan.lr:g}, "
            f"run dir {cfg.run_dir}")


def describe(plan: topology.Plan, cfg: RunConfig, argv: list[str], launch_argv: list[str]) -> str:
    """The dry run: the numbers that matter, then for every node the exact command it runs."""
    lines = [f"# world size {plan.world_size}: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
             f"process(es), strategy {cfg.strategy}",
             f"# global batch {plan.global_batch} ({cfg.batch_size} per process), "
             f"lr {plan.lr:g} (= {cfg.lr:g} x {plan.global_batch}/256)",
             f"# run dir {cfg.run_dir}",
             f"# `{shlex.join(launch_argv)}` writes {os.path.join(cfg.run_dir, 'config.toml')}, then runs:"]
    if plan.mode == "c10d":
        lines.insert(3, f"# rendezvous c10d at {plan.rdzv_endpoint} (id {plan.rdzv_id}), hosted by the node "
                        f"named {plan.rdzv_endpoint.rpartition(':')[0]}; every node runs the same command")
        for node in range(plan.max_nodes):
            lines += [f"# node {node}", shlex.join(argv)]
    else:
        lines.append(shlex.join(argv))
    return "\n".join(lines)


def train_in_place(cfg: RunConfig, out, warn) -> int:
    """`distrain train`: this process is one rank (or the whole run, outside torchrun)."""
    cfg.validate()
    for p in preflight.cheap_checks(cfg, None, here=True):
        if not p.warning:
            raise ConfigError(p.message)
    os.makedirs(cfg.run_dir, exist_ok=True)
    workers.start_server(cfg.workers)  # the loader workers' fork server imports torch beside us
    from distrib import train  # torch is imported here, only when a rank really runs

    if int(os.environ.get("RANK", "0")) == 0:
        write_run_config(cfg, os.path.join(cfg.run_dir, "config.toml"))
    result = train.main(cfg)
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ  # a clean stop is no failure for the agent
    return STOPPED_EXIT if result == "stopped" and not under_torchrun else 0


def evaluate(checkpoint, cli: dict, gpus, procs: int, as_json: bool, out, warn) -> int:
    """`distrain eval`: the checkpoint's own preprocessing and classes, on 1 process or P through torchrun."""
    from launch import use_model

    if not cli.get("data"):
        raise ConfigError("eval needs --data DIR (the ImageFolder root whose val/ to score)")
    gpus = use_model.check_gpus(gpus)
    if gpus == 0 and procs < 1:
        raise ConfigError(f"--procs {procs} must be at least 1")
    nprocs = gpus if gpus > 0 else procs
    record = use_model.read_checkpoint(checkpoint)
    use_model.check_classes(record, cli["data"])
    pre = use_model.settle_preprocessing(record, cli, warn)
    workers = cli.get("workers", use_model.max_workers(nprocs))
    cfg = RunConfig(data=cli["data"], arch=record.arch, image_size=pre.crop_size, val_crop_size=pre.crop_size,
                    val_resize_size=pre.resize_size, batch_size=cli.get("batch_size", 64), workers=workers,
                    gpus=gpus, procs=procs, resume="never", run_dir="eval",
                    val_split=record.val_split, seed=record.seed,
                    device="cpu" if gpus == 0 else "cuda").validate()
    args = [str(checkpoint)] + (["--json"] if as_json else [])
    return use_model.run_tool("eval", cfg, args, nprocs, out)
