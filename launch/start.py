"""From a resolved config to running processes: cheap checks, config.toml, then torchrun, srun or sbatch."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import tempfile

from distrib import workers
from distrib.config import ConfigError, RunConfig, write_run_config
from distrib import hangs
from launch import network, preflight, topology
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
    if dry_run:
        out.print(describe(plan, cfg, typed), soft_wrap=True, markup=False)
        return 0
    node = network.this_node(plan)
    argv = _node_argv(plan, cfg, config_path, node and node.role())
    env = _rank_environment(plan, node, cfg.run_dir)
    write_run_config(cfg, config_path)
    record = {"distrain": typed, "mode": plan.mode, "world_size": plan.world_size, "command": argv,
              "nnodes": plan.nnodes, "procs_per_node": plan.procs_per_node}
    network.write_node_record(cfg.run_dir, record, node, {k: env[k] for k in NODE_ENV_KEYS if k in env},
                              write_launch_record)
    out.print(_headline(plan, cfg), soft_wrap=True)
    if node is not None:
        out.print(f"  {node.describe()}; {_env_summary(env)}", soft_wrap=True, markup=False)
    return run_here(cfg, plan, argv, out, env)


def run_here(cfg: RunConfig, plan: topology.Plan, argv: list[str], out, env: dict) -> int:
    """Run this node's torchrun to the end; a stop request ends it at a step boundary with last.pt written."""
    stop_file = os.path.join(cfg.run_dir, "STOP")
    _remove(stop_file)  # a stop request belongs to the run that received it
    code, signalled = run(argv, env, stop_file, say=lambda m: out.print(f"[yellow]{m}[/]"))
    stopped = os.path.exists(stop_file)
    _remove(stop_file)
    if code == 0 and (signalled or stopped):
        out.print(f"[yellow]stopped[/] by {signalled or stop_file}: last.pt is in {cfg.run_dir}/checkpoints; "
                  "run the same command to resume.", soft_wrap=True)
        return {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}.get(signalled, STOPPED_EXIT)
    if code != 0:
        out.print(f"[red]run failed[/] (torchrun exit {code}); per-rank logs are in {cfg.run_dir}/logs",
                  soft_wrap=True)
        for line in hangs.describe(cfg.run_dir):
            out.print(line, soft_wrap=True, markup=False, highlight=False)
        return 1
    return 0


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _node_argv(plan: topology.Plan, cfg: RunConfig, config_path: str, role: topology.NodeRole | None) -> list[str]:
    if plan.mode == "salloc":
        env = os.environ
        head = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]], capture_output=True,
                              text=True, check=True).stdout.split()[0]
        return topology.salloc_argv(plan, cfg, sys.executable, config_path, head, env["SLURM_JOB_ID"])
    return topology.torchrun_argv(plan, cfg, sys.executable, config_path, role)


def _rank_environment(plan: topology.Plan, node: network.NodeNet | None = None, run_dir: str = "") -> dict:
    env = dict(os.environ)
    env.update(topology.node_env(plan, node and node.role(), hangs.hang_dir(run_dir), os.environ))
    if plan.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --gpus 0 means CPU even on a GPU machine
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(plan.procs_per_node, 1))))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _headline(plan: topology.Plan, cfg: RunConfig) -> str:
    return (f"[bold]distrain[/] {plan.mode}: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
            f"process(es) = world {plan.world_size}, global batch {plan.global_batch}, lr {plan.lr:g}, "
            f"run dir {cfg.run_dir}")


def describe(plan: topology.Plan, cfg: RunConfig, launch_argv: list[str]) -> str:
    """The dry run: the numbers that matter, then for every node the exact command it runs."""
    config_path = os.path.join(cfg.run_dir, "config.toml")
    lines = [f"# world size {plan.world_size}: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
             f"process(es), strategy {cfg.strategy}",
             f"# global batch {plan.global_batch} ({cfg.batch_size} per process), "
             f"lr {plan.lr:g} (= {cfg.lr:g} x {plan.global_batch}/256)",
             f"# run dir {cfg.run_dir}",
             f"# `{shlex.join(launch_argv)}` writes {config_path}, then runs:"]
    if plan.mode != "c10d":
        return "\n".join(lines + [shlex.join(_node_argv(plan, cfg, config_path, None))])
    host = plan.rdzv_endpoint.rpartition(":")[0]
    lines.insert(3, f"# rendezvous c10d at {plan.rdzv_endpoint} (id {plan.rdzv_id}), hosted by the node "
                    f"that carries {host}'s address; every node runs the same command")
    addrs = network.resolve(host)
    on_loopback = bool(addrs) and all(network.is_loopback(a) for a in addrs)  # every node on this machine
    if not on_loopback:
        lines.insert(4, f"# NODE_ADDR: each node's own address on the interface that routes to {host} (found at "
                        "launch); its ranks get GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME naming that interface")
    for node in range(plan.max_nodes):
        role = None if on_loopback else topology.NodeRole(is_host=node == 0, local_addr="NODE_ADDR")
        lines += [f"# node {node}" + (f" (carries {host}'s address)" if role and role.is_host else ""),
                  shlex.join(_node_argv(plan, cfg, config_path, role))]
    return "\n".join(lines)


# The variables a node's ranks get from distrain, recorded in launch.json and named in the summary.
NODE_ENV_KEYS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_DUMP_ON_TIMEOUT")


def _env_summary(env: dict) -> str:
    return " ".join(f"{k}={env[k]}" for k in NODE_ENV_KEYS[:2] if k in env) + (
        " (your own setting)" if any(k in os.environ for k in NODE_ENV_KEYS[:2]) else "")


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
    if not os.path.isfile(checkpoint):
        raise ConfigError(f"--checkpoint {checkpoint}: no such file")
    if not cli.get("data"):
        raise ConfigError("eval needs --data DIR (the ImageFolder root whose val/ to score)")
    run_dir = tempfile.mkdtemp(prefix="distrain-eval-")
    cfg = dataclasses.replace(RunConfig(**cli), run_dir=run_dir, gpus=gpus, procs=procs, resume="never",
                              device="cpu" if gpus == 0 else "auto").validate()
    for p in preflight.cheap_checks(cfg, None, here=True):
        if not p.warning:
            raise ConfigError(p.message)
    plan = topology.make_plan(cfg, topology.visible_gpus())
    config_path = os.path.join(run_dir, "config.toml")
    write_run_config(cfg, config_path)
    if plan.world_size == 1:
        workers.start_server(cfg.workers)
        from distrib import evaluate as ev

        ev.main(str(checkpoint), cfg, as_json)
        return 0
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc-per-node", str(plan.procs_per_node), "-m", "distrib", "eval", str(checkpoint), config_path]
    if as_json:
        argv.append("--json")
    code, _ = run(argv, _rank_environment(plan, None, run_dir), os.path.join(run_dir, "STOP"))
    return 0 if code == 0 else 1
