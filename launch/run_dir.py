"""What a run dir already holds, and what a launch into it may do: start, resume, or say it is complete.

    decision = decide(cfg)     # "fresh" | "resume" | "complete"; ConfigError when it would lose or mix runs

The rules (all torch-free, from config.toml, metrics.jsonl, position.json and outcome.json):
- a run dir holds one run: the training math it was started with (RunConfig.training_math) is recorded in
  its config.toml; resuming with other values is refused, listing each difference;
- a fresh start (--resume never, or no last.pt) into a dir that holds a run is refused unless --overwrite,
  which removes that run's checkpoints, metrics, TensorBoard events and logs together;
- a finished run, launched again with no more --epochs, is complete: nothing is started.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

from distrib.config import ConfigError, RunConfig, read_run_config
from distrib.files import read_json, write_atomic
from distrib.paths import RunPaths
from distrib.words import flag

FRESH, RESUME, COMPLETE = "fresh", "resume", "complete"


def metrics_rows(paths: RunPaths) -> list[dict]:
    rows = []
    try:
        with open(paths.metrics) as fh:
            for line in fh:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a line being written right now
    except OSError:
        pass
    return rows


def position(paths: RunPaths) -> dict | None:
    """Where the newest checkpoint is: epoch (next to train), batch, batches, epochs (distrib/train.py)."""
    return read_json(paths.position)


def outcome(paths: RunPaths) -> dict | None:
    return read_json(paths.outcome)


def write_outcome(paths: RunPaths, state: str, **extra) -> None:
    """RUN_DIR/outcome.json: how the newest launch here ended (running, finished, stopped, failed)."""
    previous = outcome(paths) or {}
    record = {"state": state, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
              "wall_seconds": previous.get("wall_seconds", 0.0), **extra}
    os.makedirs(paths.root, exist_ok=True)
    write_atomic(paths.outcome, record, as_json=True)


def launcher_alive(record: dict) -> bool | None:
    """Whether the launcher that wrote outcome.json is still running: True or False on its own machine, None
    (cannot tell) from another one."""
    if record.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(record.get("pid", 0)), 0)
    except (OSError, ValueError):
        return False
    return True


def holds_run(paths: RunPaths) -> bool:
    return (os.path.exists(paths.last) or os.path.exists(paths.best) or bool(metrics_rows(paths)))


def recorded_config(paths: RunPaths) -> RunConfig | None:
    if not os.path.isfile(paths.config):
        return None
    try:
        return read_run_config(paths.config)
    except (ConfigError, TypeError):
        return None  # written by another version: nothing to compare with


def math_differences(cfg: RunConfig, recorded: RunConfig) -> list[str]:
    given, then = cfg.with_absolute_paths().training_math(), recorded.with_absolute_paths().training_math()
    return [f"--{flag(k)} {_show(given[k])} (recorded: {_show(then.get(k))})"
            for k in sorted(given) if given[k] != then.get(k)]


def _show(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def decide(cfg: RunConfig) -> str:
    paths = RunPaths(cfg.run_dir)
    if cfg.overwrite:
        return FRESH
    if not holds_run(paths):
        return FRESH
    ways = f"use another --run-dir for a new run, or --overwrite to replace the run in {cfg.run_dir}"
    if cfg.resume == "never":
        raise ConfigError(f"{cfg.run_dir} already holds a run and --resume never would replace it; {ways}")
    if cfg.resume != "auto":
        return RESUME  # an explicit checkpoint: the user chose what to continue
    recorded = recorded_config(paths)
    if recorded is not None:
        differ = math_differences(cfg, recorded)
        if differ:
            raise ConfigError(f"{cfg.run_dir} holds a run trained with other values: {'; '.join(differ)}. "
                              f"Resuming it would mix two trainings; {ways}")
    if not os.path.exists(paths.last):
        raise ConfigError(f"{cfg.run_dir} holds metrics or best.pt but no checkpoints/last.pt to resume; {ways}")
    where = position(paths) or {}
    if where.get("epoch", -1) >= cfg.epochs:  # written with last.pt: every epoch asked for is done
        return COMPLETE
    return RESUME


def clear(paths: RunPaths) -> list[str]:
    """--overwrite: everything the old run made (checkpoints, metrics, TensorBoard events, logs, records,
    exports made inside it), together; the new run writes its own config. Returns the names removed."""
    try:
        names = sorted(os.listdir(paths.root))
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = os.path.join(paths.root, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            name += "/"
        else:
            os.remove(path)
        removed.append(name)
    return removed
