"""THE validation of a run config: every field against its own declaration, then a few cross-field rules.

Every entry point goes through `validate` (launch, train, eval, predict, export, bench, check, and each
rank reading RUN_DIR/config.toml). It needs nothing but the values, except two rules that look for the
files the options name (--weights, --resume PATH). What needs the machine (GPUs, the data's files, a
SLURM allocation) is preflight's. Each message says what was given, what is expected and how to fix it.
"""

from __future__ import annotations

import functools
import os
import typing
from dataclasses import fields

from distrib.config.fields import ConfigError, check_field, flag, time_limit_seconds


def validate(cfg) -> None:
    """Raise ConfigError for the first wrong value: fields in declaration order, then RULES."""
    hints = _hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        problem = _wrong_type(f.name, value, hints[f.name]) or check_field(f, value)
        if problem:
            raise ConfigError(problem)
    for rule in RULES:
        problem = rule(cfg)
        if problem:
            raise ConfigError(problem)


# ---------------------------------------------------------------- cross-field rules: (cfg) -> problem or None

def data_or_synthetic(cfg) -> str | None:
    if not cfg.synthetic and not cfg.data:
        return "no data: pass --data DIR (an ImageFolder root with train/ and val/) or --synthetic"


def nodes_in_order(cfg) -> str | None:
    lo, hi = cfg.min_max_nodes()
    if lo < 1 or hi < lo:
        return f"--nodes {cfg.nodes} needs 1 <= MIN <= MAX; use e.g. --nodes 1 or --nodes 2:4"


def dp_is_one_node(cfg) -> str | None:
    if cfg.strategy == "dp" and cfg.min_max_nodes()[1] > 1:
        return "--strategy dp runs one process on one node; use --strategy ddp with --nodes > 1"


def dp_is_one_process(cfg) -> str | None:
    if cfg.strategy == "dp" and cfg.procs > 1:
        return (f"--strategy dp runs one process (nn.DataParallel over the node's GPUs), not --procs {cfg.procs}; "
                f"use --strategy ddp --procs {cfg.procs}, or drop --procs")


def lr_min_below_lr(cfg) -> str | None:
    if cfg.lr_min >= cfg.lr:
        return f"--lr-min {cfg.lr_min} must be below --lr {cfg.lr}; lower --lr-min (0 ends the cosine at zero)"


def frozen_backbone_has_no_sync_bn(cfg) -> str | None:
    if cfg.freeze_backbone and cfg.sync_bn:
        return ("--freeze-backbone keeps every BatchNorm's statistics as loaded, so --sync-bn has nothing to "
                "synchronise; drop --sync-bn")


def one_source_of_weights(cfg) -> str | None:
    if cfg.pretrained and cfg.weights:
        return "--pretrained and --weights both given; keep one of them"


def time_outlasts_signal(cfg) -> str | None:
    limit = time_limit_seconds(cfg.time) if cfg.time else None
    if limit is not None and limit <= cfg.signal_seconds:
        return (f"--time {cfg.time} is not longer than --signal-seconds {cfg.signal_seconds}: the job would be "
                "told to stop as soon as it starts; raise --time or lower --signal-seconds")


def one_line_for_sbatch(cfg) -> str | None:
    """The job script takes every value on one line (locally, quoting carries any path through)."""
    if not cfg.slurm:
        return None
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str) and any(c in item for c in "\n\r\0"):
                return f"{flag(f.name)} {item!r} contains a line break; give it on one line"


def sbatch_run_dir(cfg) -> str | None:
    if cfg.slurm and cfg.run_dir and "\\" in cfg.run_dir:
        return (f"--run-dir {cfg.run_dir!r} contains a backslash, which sbatch --output cannot express; choose a "
                "run directory without one")


def weights_file_exists(cfg) -> str | None:
    if cfg.weights and not os.path.exists(cfg.weights):
        return (f"--weights {cfg.weights}: no such file; give a local .pt/.pth/.safetensors state dict or a "
                "distrain export folder")


def resume_file_exists(cfg) -> str | None:
    if cfg.resume not in ("auto", "never") and not os.path.isfile(cfg.resume):
        return f"--resume {cfg.resume}: no such checkpoint file; give a .pt path, 'auto' or 'never'"


RULES = (nodes_in_order, data_or_synthetic, dp_is_one_node, dp_is_one_process, lr_min_below_lr,
         frozen_backbone_has_no_sync_bn, one_source_of_weights, time_outlasts_signal, one_line_for_sbatch,
         sbatch_run_dir, weights_file_exists, resume_file_exists)


# ---------------------------------------------------------------- types (what Python callers may get wrong)

@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)  # evaluating annotations is slow: once per class


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _wrong_type(name: str, value, hint) -> str | None:
    args = typing.get_args(hint)
    if value is None:
        return None if type(None) in args else f"{flag(name)} is required; leave it at its default"
    if typing.get_origin(hint) is tuple:
        if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
            return None
        return f"{flag(name)} {value!r} is not a list of strings; give the option once per item"
    want = next((a for a in args if a is not type(None)), hint) if args else hint
    if want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
    expected = _NAMES.get(want, want.__name__)
    return None if ok else f"{flag(name)} {value!r} is not {expected}; give {expected}"
