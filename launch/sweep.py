"""`distrain sweep`: a grid (or a random sample) of runs, each an ordinary run dir inside one sweep dir.

    distrain sweep --data D --arch resnet18 --lr 0.05,0.1 --seed 0,1 [--slurm --max-parallel 2] [--dry-run]

Any training option may take a comma list (an axis of the grid; the product follows the command line's
order) or, with --sample N, a range: loguniform:LO:HI, uniform:LO:HI, int:LO:HI. Options that change the
resources (topology, SLURM) are the same for every point. The sweep dir (default sweeps/<arch>-<hash of
the options>, so the same command finds the same sweep) holds sweep.toml and one run dir per point, named
by its values (lr0.1-seed0): what `distrain launch` makes, so eval, predict, export, status and resume work
on it as on any run. The same command again starts only the points that are not complete.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import product

from distrib.config import SLURM, TOPOLOGY, ConfigError, RunConfig, option_fields
from distrib.files import read_json, write_atomic
from distrib.paths import RunPaths
from distrib.words import flag
from launch import run_dir as rd
from launch.options import _field_types, is_switch

SWEEP_TOML = "sweep.toml"
RANGE = re.compile(r"^(loguniform|uniform|int):([^:]+):([^:]+)$")
FIXED_GROUPS = (TOPOLOGY, SLURM)  # resources: every point (every array task) gets the same
PASS_THROUGH = {"sbatch_arg", "setup"}  # free text, commas included
NOT_AXES = {"run_dir", "resume", "overwrite", "config"}


@dataclass(frozen=True)
class Point:
    index: int
    values: dict          # option name -> value as typed (str)
    name: str             # lr0.1-seed0
    run_dir: str


def split_args(args: list[str]) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """(fixed argv, {option: [values]} for comma lists, {option: range spec}) from `distrain sweep`'s extra
    arguments; an option that cannot vary is refused in one line."""
    names = {flag(f.name): f for f in option_fields()}
    fixed, axes, ranges = [], {}, {}
    i = 0
    while i < len(args):
        word = args[i]
        key, eq, inline = word[2:].partition("=") if word.startswith("--") else ("", "", "")
        field = names.get(key)
        takes_value = field is not None and not is_switch(_field_types()[field.name])
        if not takes_value:
            fixed.append(word)
            i += 1
            continue
        value = inline if eq else (args[i + 1] if i + 1 < len(args) else "")
        i += 1 if eq else 2
        varies = "," in value or (RANGE.match(value) is not None)
        if varies and field.name not in PASS_THROUGH:
            if field.metadata["group"] in FIXED_GROUPS or field.name in NOT_AXES:
                raise ConfigError(f"--{key} {value}: --{key} cannot vary inside one sweep (every point gets the "
                                  f"same resources and place); give one value, or run one sweep per value")
            if RANGE.match(value):
                ranges[field.name] = value
            else:
                axes[field.name] = [v.strip() for v in value.split(",")]
                if any(not v for v in axes[field.name]):
                    raise ConfigError(f"--{key} {value}: an empty value in the list; give values like 0.1,0.2")
            continue
        fixed += [f"--{key}", value]
    return fixed, axes, ranges


def draw(spec: str, rng: random.Random) -> str:
    kind, lo, hi = RANGE.match(spec).groups()
    try:
        a, b = float(lo), float(hi)
    except ValueError:
        raise ConfigError(f"{spec}: the bounds must be numbers, e.g. loguniform:1e-3:1e-1") from None
    if not a < b or (kind == "loguniform" and a <= 0):
        raise ConfigError(f"{spec}: an empty range; give LO < HI{' (both above 0)' if kind == 'loguniform' else ''}")
    if kind == "int":
        return str(rng.randint(math.ceil(a), math.floor(b)))
    value = math.exp(rng.uniform(math.log(a), math.log(b))) if kind == "loguniform" else rng.uniform(a, b)
    return f"{value:.4g}"


def points_of(axes: dict[str, list[str]], ranges: dict[str, str], sample: int | None, seed: int,
              max_points: int) -> list[dict[str, str]]:
    """The grid of the comma lists (command-line order), or --sample N points drawn from ranges and lists."""
    if ranges and not sample:
        raise ConfigError(f"--{flag(next(iter(ranges)))} {next(iter(ranges.values()))}: a range needs --sample N "
                          "(how many random points to draw)")
    if sample:
        rng = random.Random(seed)  # the same command draws the same points
        chosen = [{**{k: rng.choice(v) for k, v in axes.items()}, **{k: draw(s, rng) for k, s in ranges.items()}}
                  for _ in range(sample)]
    else:
        chosen = [dict(zip(axes, combo)) for combo in product(*axes.values())]
    if not chosen or not (axes or ranges):
        raise ConfigError("a sweep needs at least one option with several values, e.g. --lr 0.05,0.1")
    if len(chosen) > max_points:
        raise ConfigError(f"{len(chosen)} points is more than --max-points {max_points}; raise --max-points if "
                          "you mean it")
    return chosen


def point_name(values: dict[str, str]) -> str:
    words = [f"{flag(k).replace('-', '_')}{v}" for k, v in values.items()]
    name = "-".join(re.sub(r"[^\w.+]", "_", w) for w in words)
    return name if len(name) <= 100 else name[:80] + "-" + hashlib.sha1(name.encode()).hexdigest()[:8]


def default_dir(fixed: list[str], axes: dict, ranges: dict, sample: int | None) -> str:
    key = json.dumps([fixed, axes, ranges, sample], sort_keys=True)
    arch = fixed[fixed.index("--arch") + 1] if "--arch" in fixed[:-1] else "resnet50"
    return os.path.join("sweeps", f"{arch}-{hashlib.sha1(key.encode()).hexdigest()[:8]}")


def plan_points(fixed: list[str], chosen: list[dict[str, str]], sweep_dir: str) -> list[Point]:
    return [Point(i, values, point_name(values), os.path.join(sweep_dir, point_name(values)))
            for i, values in enumerate(chosen)]


def point_argv(fixed: list[str], point: Point) -> list[str]:
    """The `distrain launch` arguments of one point: what a user would type for that run alone."""
    return fixed + [w for k, v in point.values.items() for w in (f"--{flag(k)}", v)] + ["--run-dir", point.run_dir]


# ---------------------------------------------------------------- which points to run

def point_state(cfg: RunConfig) -> str:
    """complete | running | to run (failed, stopped, never started)."""
    paths = RunPaths(cfg.run_dir)
    where = rd.position(paths) or {}
    if where.get("epoch", -1) >= cfg.epochs:
        return "complete"
    job = (read_json(paths.launch_record) or {}).get("job_id")
    if job:
        from slurm.submit import job_state

        if job_state(str(job)) in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED"):
            return "running"
    return "to run"


def write_sweep_toml(sweep_dir: str, fixed: list[str], points: list[Point]) -> None:
    import tomli_w

    os.makedirs(sweep_dir, exist_ok=True)
    write_atomic(os.path.join(sweep_dir, SWEEP_TOML), tomli_w.dumps({
        "fixed": fixed, "varied": sorted({k for p in points for k in p.values}),
        "points": [{"index": p.index, "name": p.name, "run_dir": os.path.abspath(p.run_dir),
                    "values": p.values} for p in points]}))


def read_sweep(sweep_dir: str) -> dict | None:
    import tomllib

    try:
        with open(os.path.join(sweep_dir, SWEEP_TOML), "rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return None


# ---------------------------------------------------------------- running them here

def run_here(todo: list[tuple[Point, RunConfig]], fixed: list[str], parallel: int, gpus: int, out) -> int:
    """The points one after another, or `parallel` at once, each given its share of this node's GPUs."""
    share = gpus // parallel if gpus else 0
    if gpus and share == 0:
        raise ConfigError(f"--parallel {parallel} with {gpus} GPU(s): each point needs at least one; use "
                          f"--parallel {gpus} or fewer")
    waiting, running, failed = list(todo), [], []
    slots = list(range(parallel))
    while waiting or running:
        while waiting and slots:
            (point, _), slot = waiting.pop(0), slots.pop(0)
            env = dict(os.environ)
            if share:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(slot * share + g) for g in range(share))
            argv = point_argv(fixed, point) + (["--gpus", str(share)] if share and "--gpus" not in fixed else [])
            log = os.path.join(point.run_dir, "logs", "sweep-launch.out")
            os.makedirs(os.path.dirname(log), exist_ok=True)
            out.print(f"point {point.index} {point.name}: distrain launch {shlex.join(argv)}", soft_wrap=True,
                      markup=False, highlight=False)
            with open(log, "ab") as fh:
                proc = subprocess.Popen([sys.executable, "-m", "launch", "launch", *argv], env=env, stdout=fh,
                                        stderr=subprocess.STDOUT)
            running.append((point, proc, slot, log))
        time.sleep(0.5)
        for item in list(running):
            point, proc, slot, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            slots.append(slot)
            word = "finished" if proc.returncode == 0 else f"ended with exit {proc.returncode} (see {log})"
            out.print(f"point {point.index} {point.name}: {word}", soft_wrap=True, markup=False, highlight=False)
            if proc.returncode != 0:
                failed.append(point)
    return 1 if failed else 0


# ---------------------------------------------------------------- the table

def show(sweep_dir: str, out) -> None:
    """One row per point: its values, state, epochs done, best acc1, img/s; best first."""
    from pathlib import Path

    from rich.table import Table

    from launch.runs_table import read_run

    sweep = read_sweep(sweep_dir)
    varied = list(sweep["varied"])
    rows = []
    for p in sweep["points"]:
        run = read_run(Path(p["run_dir"]))
        best = run.best()
        speed = sum(r["images_per_sec"] for r in run.rows) / len(run.rows) if run.rows else None
        rows.append((best if best is not None else -1.0, [*(p["values"].get(k, "") for k in varied), run.state,
                     str(len(run.rows)), f"{best:.2f}" if best is not None else "-",
                     f"{speed:,.0f}" if speed else "-", p["name"]]))
    table = Table(title=f"sweep {sweep_dir}: {len(rows)} points", show_lines=False)
    for col in (*(f"--{flag(k)}" for k in varied), "state", "epochs", "best acc1", "img/s", "run dir"):
        table.add_column(col, overflow="fold")
    for _, row in sorted(rows, key=lambda r: -r[0]):
        table.add_row(*row)
    out.print(table)


def is_sweep(path: str) -> bool:
    return os.path.isfile(os.path.join(path, SWEEP_TOML))


def start(points: list[Point], cfgs: list[RunConfig], typed: list[list[str]], sweep_dir: str, fixed: list[str],
          parallel: int, max_parallel: int | None, dry_run: bool, out) -> int:
    """Say which points are complete, running, or to run; then run or submit the last ones."""
    from launch import console, topology

    states = [point_state(c) for c in cfgs]
    todo = [p.index for p, s in zip(points, states) if s == "to run"]
    varied = sorted({k for p in points for k in p.values})
    console.err.print(f"sweep {sweep_dir}: {len(points)} points over {', '.join('--' + flag(k) for k in varied)}",
                      soft_wrap=True, markup=False, highlight=False)
    for word in ("complete", "running", "to run"):
        names = [p.name for p, s in zip(points, states) if s == word]
        if names:
            console.err.print(f"  {word}: {len(names)} ({', '.join(names[:8])}{' ...' if len(names) > 8 else ''})",
                              soft_wrap=True, markup=False, highlight=False)
    if not todo:
        out.print(f"sweep {sweep_dir}: every point is complete or running; nothing to start "
                  f"(distrain status {sweep_dir})", soft_wrap=True, markup=False, highlight=False)
        return 0
    from launch import preflight, slurm_launch

    base = cfgs[0]
    part = slurm_launch.partition_for(base) if base.slurm else None  # a job's GPUs: the partition's
    plan = topology.make_plan(base, (part.gpus_per_node if part else 0) if base.slurm else topology.visible_gpus())
    fatal = [p for p in preflight.cheap_checks(base, plan, here=not dry_run) if not p.warning]
    if fatal and not dry_run:
        raise ConfigError(fatal[0].message)  # the points share their data and resources: checked once, here
    if not dry_run:
        write_sweep_toml(sweep_dir, fixed, points)
    if base.slurm:
        return slurm_launch.submit_sweep(cfgs, todo, sweep_dir, typed, plan, part, max_parallel, dry_run, out)
    if dry_run:
        for i in todo:
            out.print(f"point {i}: {shlex.join(typed[i])}", soft_wrap=True, markup=False, highlight=False)
        return 0
    gpus = topology.visible_gpus() if base.gpus is None else base.gpus
    return run_here([(points[i], cfgs[i]) for i in todo], fixed, parallel, gpus if base.strategy == "ddp" else 0, out)
