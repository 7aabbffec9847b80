"""From a resolved config to running processes: cheap checks, config.toml, then torchrun, srun or sbatch."""

from __future__ import annotations

import os
import shlex
import sys
import time

from distrib.config import ConfigError, RunConfig, recipes, write_run_config
from distrib.data import workers
from distrib.paths import RunPaths
from distrib.runtime import hangs
from distrib.runtime.failure import clear as clear_failures
from distrib.words import position_words
from launch import console, eval_target, network, preflight, run_dir, status, topology, torchrun
from launch.run_local import rank_failure, run, write_launch_record

STOPPED_EXIT = 3  # stopped on request before the last epoch; the same command resumes


def launch(cfg: RunConfig, typed: list[str], dry_run: bool, out, warn) -> int:
    """`typed` is the user's own `distrain launch ...` line: what every node runs, kept in launch.json."""
    cfg.validate()
    part = None
    if cfg.slurm:  # the job's GPUs are the partition's nodes', not this login node's
        from launch import slurm_launch

        part = slurm_launch.partition_for(cfg)
    gpus_here = (part.gpus_per_node if part else 0) if cfg.slurm else topology.visible_gpus()
    plan = topology.make_plan(cfg, gpus_here, topology.allocation_nodes())
    check_precision(cfg, plan.device)
    paths = RunPaths(cfg.run_dir)
    if not dry_run:
        if run_dir.decide(cfg) == run_dir.COMPLETE:  # torch-free: a complete run answers in well under a second
            return say_complete(cfg, out)
    # A dry run is often prepared for another machine: what it cannot see from here is only a warning.
    problems = preflight.cheap_checks(cfg, plan, here=not dry_run)
    in_use = None if dry_run else preflight.check_not_in_use(cfg, plan)  # a sweep's points: sweep.point_state
    problems += [in_use] if in_use else []
    fatal = [p for p in problems if not p.warning]
    if fatal and not dry_run:
        raise ConfigError(fatal[0].message)
    for p in problems:
        warn(p.message)
    if not dry_run and cfg.overwrite:
        say_cleared(run_dir.clear(paths), cfg.run_dir, out)
    if cfg.slurm:
        from launch import slurm_launch

        return slurm_launch.launch(cfg, plan, typed, dry_run, out, part)
    if dry_run:
        out.print(describe(plan, cfg, typed), soft_wrap=True, markup=False)
        return 0
    node = network.this_node(plan)
    argv = torchrun.plan_argv(plan, cfg, sys.executable, node and node.role())
    env = _rank_environment(plan, node, cfg.run_dir)
    write_run_config(cfg, paths.config)
    record = {"distrain": typed, "mode": plan.mode, "world_size": plan.world_size, "command": argv,
              "nnodes": plan.nnodes, "procs_per_node": plan.procs_per_node}
    network.write_node_record(cfg.run_dir, record, node, {k: env[k] for k in NODE_ENV_KEYS if k in env},
                              write_launch_record)
    out.print(_headline(plan, cfg), soft_wrap=True)
    if node is not None:
        out.print(f"  {node.describe()}; {_env_summary(env)}", soft_wrap=True, markup=False)
    return run_here(cfg, plan, argv, typed, out, env)


def say_cleared(removed: list[str], folder: str, out) -> None:
    if removed:
        out.print(f"--overwrite: removed {', '.join(removed)} from {folder}", soft_wrap=True, markup=False,
                  highlight=False)


def say_complete(cfg: RunConfig, out) -> int:
    """A finished run launched again: say so, with its summary; nothing is started."""
    trained = (run_dir.position(RunPaths(cfg.run_dir)) or {}).get("epoch", cfg.epochs)
    done = (f"has trained all {cfg.epochs} epoch(s)" if trained <= cfg.epochs else
            f"has trained {trained} epochs, more than the {cfg.epochs} asked for")
    out.print(f"[green]run complete[/]: {cfg.run_dir} {done}; nothing to do "
              f"(--epochs {trained + 1} or more to train on, or --overwrite to start again).", soft_wrap=True)
    for line in status.summary(cfg.run_dir, cfg.data):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def check_precision(cfg: RunConfig, device: str) -> None:
    if cfg.amp == "fp16" and device == "cpu":
        raise ConfigError("--amp fp16 needs a CUDA GPU (fp16 autocast and its gradient scaler are for GPUs); on the "
                          "CPU use --amp off (the default there) or --amp bf16")


def run_here(cfg: RunConfig, plan: topology.Plan, argv: list[str], typed: list[str], out, env: dict) -> int:
    """Run this node's torchrun to the end; a stop request ends it at a step boundary with last.pt written.
    torchrun's own stderr (its failure dump) goes to RUN_DIR/logs/torchrun.err; the user sees the failing
    rank's one line instead."""
    paths = RunPaths(cfg.run_dir)
    _remove(paths.stop)  # a stop request belongs to the run that received it
    clear_failures(cfg.run_dir)
    run_dir.write_outcome(paths, "running")
    started = time.monotonic()
    code, signals = run(argv, env, paths.stop, say=lambda m: out.print(f"[yellow]{m}[/]", soft_wrap=True),
                        stderr_path=paths.torchrun_err)
    stopped = os.path.exists(paths.stop)
    _remove(paths.stop)
    if len(signals) > 1:  # stopped at once: whatever torchrun's exit, the run is stopped, not failed
        code = 0
    stopped_by = signals[0] if signals else (paths.stop if stopped else None)
    return finish(cfg, code, stopped_by, time.monotonic() - started, typed, out, at_once=len(signals) > 1)


def finish(cfg: RunConfig, code: int, stopped_by: str | None, seconds: float, typed: list[str], out,
           at_once: bool = False) -> int:
    """Say how the run ended (summary, stop position and the resume command, or the failing rank's line),
    record it in outcome.json, and return the exit code."""
    paths = RunPaths(cfg.run_dir)
    wall = ((run_dir.outcome(paths) or {}).get("wall_seconds") or 0.0) + seconds
    if code == 0 and stopped_by:
        where = run_dir.position(paths) or {}
        run_dir.write_outcome(paths, "stopped", wall_seconds=wall)
        at = position_words(where.get("epoch", 0), where.get("batch", 0), where.get("batches"))
        if at_once:
            saved = f"{paths.last} holds {at}" if where else "no checkpoint was written yet"
            out.print(f"[yellow]stopped at once[/] by a second {stopped_by}; {saved}. Resume with the same "
                      f"command:\n  {shlex.join(typed)}", soft_wrap=True, highlight=False)
        else:
            out.print(f"[yellow]stopped[/] by {stopped_by} at {at}; {paths.last} is written. Resume with the same "
                      f"command:\n  {shlex.join(typed)}", soft_wrap=True, highlight=False)
        return {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}.get(stopped_by, STOPPED_EXIT)
    if code != 0:
        run_dir.write_outcome(paths, "failed", wall_seconds=wall)
        failure = rank_failure(cfg.run_dir)
        if failure is None:
            out.print(f"[red]run failed[/] (torchrun exit {code}); see {paths.torchrun_err} and the per-rank "
                      f"logs in {paths.logs}", soft_wrap=True)
            return 1
        if failure.bad_input:
            console.error(failure.message)
            return 2
        out.print(f"[red]run failed[/]: {failure}", soft_wrap=True, highlight=False)
        for line in hangs.describe(cfg.run_dir):  # a hang's explanation and the stacks (distrib/runtime/hangs.py)
            out.print(line, soft_wrap=True, markup=False, highlight=False)
        return 1
    run_dir.write_outcome(paths, "finished", wall_seconds=wall)
    out.print(f"[green]run finished[/]: {cfg.run_dir}", soft_wrap=True)
    for line in status.summary(cfg.run_dir, cfg.data):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    return 0


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _rank_environment(plan: topology.Plan, node: network.NodeNet | None = None, run_dir: str = "") -> dict:
    extra = torchrun.node_env(plan.device, RunPaths(run_dir), os.environ, node and node.role(),
                              elastic=plan.mode == "c10d")
    return torchrun.rank_env(plan.device, plan.procs_per_node, os.environ, extra)


def _headline(plan: topology.Plan, cfg: RunConfig) -> str:
    return (f"[bold]distrain[/] {plan.mode}: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
            f"process(es) = world {plan.world_size}, global batch {plan.global_batch}, lr {plan.lr:g}, "
            f"run dir {cfg.run_dir}")


def describe(plan: topology.Plan, cfg: RunConfig, launch_argv: list[str]) -> str:
    """The dry run: the numbers that matter, then for every node the exact command it runs."""
    config_path = RunPaths(cfg.run_dir).config
    lines = [f"# world size {plan.world_size}: {plan.nnodes} node(s) x {plan.procs_per_node} {plan.device} "
             f"process(es), strategy {cfg.strategy}",
             f"# global batch {plan.global_batch} ({cfg.batch_size} per process"
             f"{f' x {cfg.accum_steps} accumulated' if cfg.accum_steps > 1 else ''}), "
             f"lr {plan.lr:g} (= {cfg.lr:g} x {plan.global_batch}/256)",
             f"# run dir {cfg.run_dir}",
             *([f"# recipe {cfg.recipe}: {recipes.flags(cfg.recipe, cfg)}"] if cfg.recipe else []),
             *([f"# note: {note}"] if cfg.recipe and (note := recipes.batch_note(cfg.recipe, plan.global_batch)) else []),
             f"# `{shlex.join(launch_argv)}` writes {config_path}, then runs:"]
    if plan.mode != "c10d":
        return "\n".join(lines + [shlex.join(torchrun.plan_argv(plan, cfg, sys.executable))])
    host = plan.rdzv_endpoint.rpartition(":")[0]
    lines.insert(3, f"# rendezvous c10d at {plan.rdzv_endpoint} (id {plan.rdzv_id}), hosted by the node "
                    f"that carries {host}'s address; every node runs the same command")
    on_loopback = network.only_loopback(network.resolve(host))  # every node on this machine
    if not on_loopback:
        lines.insert(4, f"# NODE_ADDR: each node's own address on the interface that routes to {host} (found at "
                        "launch); its ranks get GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME naming that interface")
    for node in range(plan.max_nodes):
        role = None if on_loopback else torchrun.NodeRole(is_host=node == 0, local_addr="NODE_ADDR")
        lines += [f"# node {node}" + (f" (carries {host}'s address)" if role and role.is_host else ""),
                  shlex.join(torchrun.plan_argv(plan, cfg, sys.executable, role))]
    return "\n".join(lines)


# The variables a node's ranks get from distrain, recorded in launch.json and named in the summary.
NODE_ENV_KEYS = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_DUMP_ON_TIMEOUT")


def _env_summary(env: dict) -> str:
    return " ".join(f"{k}={env[k]}" for k in NODE_ENV_KEYS[:2] if k in env) + (
        " (your own setting)" if any(k in os.environ for k in NODE_ENV_KEYS[:2]) else "")


def train_in_place(cfg: RunConfig, typed: list[str], out, warn) -> int:
    """`distrain train`: this process is one rank (or the whole run, outside torchrun)."""
    cfg.validate()
    device = "cpu" if cfg.device == "cpu" else "cuda" if topology.visible_gpus() else "cpu"
    if cfg.device == "cuda" and device == "cpu":
        raise ConfigError("--device cuda: no CUDA GPU is visible here; use --device cpu, or run where the GPUs are")
    check_precision(cfg, device)
    single = "TORCHELASTIC_RUN_ID" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == 1
    if single:  # the whole run is this process: the run-dir rules apply as for launch
        if run_dir.decide(cfg) == run_dir.COMPLETE:
            return say_complete(cfg, out)
    for p in preflight.cheap_checks(cfg, None, here=True):
        if not p.warning:
            raise ConfigError(p.message)
    if single and cfg.overwrite:
        say_cleared(run_dir.clear(RunPaths(cfg.run_dir)), cfg.run_dir, out)
    os.makedirs(cfg.run_dir, exist_ok=True)
    workers.start_server(cfg.workers)  # the loader workers' fork server imports torch beside us
    from distrib import train  # torch is imported here, only when a rank really runs

    if int(os.environ.get("RANK", "0")) == 0:
        write_run_config(cfg, RunPaths(cfg.run_dir).config)
    if not single:
        result = train.main(cfg)
        return 0  # under torchrun a clean stop is no failure for the agent
    run_dir.write_outcome(RunPaths(cfg.run_dir), "running")
    started = time.monotonic()
    try:
        result = train.main(cfg)
    except KeyboardInterrupt:
        result = "stopped"
    return finish(cfg, 0, "request" if result == "stopped" else None, time.monotonic() - started, typed, out)


def evaluate(checkpoint, cli: dict, gpus, procs: int, as_json: bool, out, warn, ema: bool = True,
             report=None) -> int:
    """`distrain eval`: the checkpoint's own preprocessing and classes, on 1 process or P through torchrun."""
    from launch import model_tools

    record = None
    if not cli.get("data"):  # the data it trained on, as recorded in the checkpoint (an absolute path)
        record = model_tools.read_checkpoint(checkpoint)
        cli = {**cli, "data": _trained_data(record)}
    RunConfig(**cli, gpus=gpus, procs=procs).validate()  # what was typed, before anything else is read
    gpus = model_tools.check_gpus(gpus)
    nprocs = gpus if gpus > 0 else procs
    record = record or model_tools.read_checkpoint(checkpoint)
    with model_tools.scratch_run_dir("eval-data") as scratch:
        target = eval_target.choose(str(cli["data"]), record.config, scratch)
        model_tools.check_classes(record, target.data, target.val_split, shown=str(cli["data"]))
        console.err.print(f"scoring {target.says}", soft_wrap=True, markup=False)
        return _evaluate(record, target, cli, gpus, procs, nprocs, as_json, out, warn, ema, report)


def _trained_data(record) -> str:
    data = record.config.get("data")
    if record.config.get("synthetic") or not data:
        raise ConfigError(f"{record.path} was trained on synthetic images: give the data to score with --data DIR "
                          "(class folders, or a root with val/)")
    if not os.path.isdir(data):
        raise ConfigError(f"{record.path} was trained on {data}, which is not there any more: give the data to "
                          "score with --data DIR (class folders, or a root with val/)")
    return data


def _evaluate(record, target, cli: dict, gpus: int, procs: int, nprocs: int, as_json: bool, out, warn,
              ema: bool, report=None) -> int:
    from launch import model_tools

    pre = model_tools.settle_preprocessing(record, cli, warn)
    workers = cli.get("workers", model_tools.max_workers(nprocs))
    # Training's own batch size and precision by default: the figures then match its metrics row exactly.
    trained = record.config
    cfg = RunConfig(data=target.data, arch=record.arch, image_size=pre.crop_size, val_crop_size=pre.crop_size,
                    val_resize_size=pre.resize_size, batch_size=cli.get("batch_size", trained.get("batch_size", 64)),
                    workers=workers, gpus=gpus, procs=procs, resume="never", run_dir="eval",
                    amp=trained.get("amp", "off") if gpus else "off", channels_last=trained.get("channels_last"),
                    val_split=target.val_split, seed=trained.get("seed"),
                    device="cpu" if gpus == 0 else "cuda").validate()
    args = [record.path] + (["--json"] if as_json else []) + ([] if ema else ["--no-ema"])
    args += ["--report", os.path.abspath(report)] if report else []  # the ranks run in a scratch dir
    return model_tools.run_tool("eval", cfg, args, nprocs, out)
