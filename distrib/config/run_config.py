"""RunConfig: the frozen run config, all sections in one flat dataclass (`cfg.lr`, `cfg.nodes`, ...)."""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, fields

from distrib.config.fields import TRAINING
from distrib.config.sections import (
    DataOptions,
    ModelOptions,
    OptimOptions,
    RecipeOptions,
    RunOptions,
    SlurmOptions,
    TopologyOptions,
)
from distrib.config.validate import validate

SECTIONS = (TopologyOptions, SlurmOptions, DataOptions, ModelOptions, OptimOptions, RecipeOptions, RunOptions)

# Training options that do not change what is trained: how long (a run continues with more --epochs), how
# fast, and how it is reported. Every other training option is part of a run's identity (training_math).
NOT_TRAINING_MATH = frozenset({"epochs", "workers", "decode", "amp", "channels_last", "compile", "bucket_mb",
                               "log_interval", "log_grad_norm"})
PATH_FIELDS = ("data", "run_dir", "weights")  # recorded as absolute paths (with_absolute_paths)


# Bases in reverse: a dataclass lists its bases' fields from the last base to the first, so the options
# keep the order of SECTIONS (topology first) in --help and in config.toml.
@dataclass(frozen=True)
class RunConfig(*reversed(SECTIONS)):
    """Each field is one long option (`batch_size` is `--batch-size`) and one key of RUN_DIR/config.toml."""

    def __post_init__(self):
        for f in fields(self):  # repeatable options arrive as lists (CLI, TOML): kept as tuples, hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))

    def validate(self) -> RunConfig:
        """Checks that need nothing but the values (distrib/config/validate.py); raises ConfigError."""
        validate(self)
        return self

    # ---- derived values ----
    def min_max_nodes(self) -> tuple[int, int]:
        lo, _, hi = self.nodes.partition(":")
        return int(lo), int(hi or lo)

    def training_math(self) -> dict:
        """The options that change what is trained (not where, how fast or for how long): a run dir holds
        one run of these values. New training options count unless listed in NOT_TRAINING_MATH."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.metadata["group"] == TRAINING and f.name not in NOT_TRAINING_MATH}
        if out.get("data"):
            out["data"] = os.path.normpath(out["data"])
        return out

    def global_batch(self, world_size: int) -> int:
        """Images per optimizer step: batch x world x --accum-steps."""
        return self.batch_size * world_size * self.accum_steps

    def scaled_lr(self, world_size: int) -> float:
        """--lr is given per 256 images; linear scaling rule (Goyal et al. 2017) to the global batch."""
        return self.lr * self.global_batch(world_size) / 256

    def with_run_dir(self) -> RunConfig:
        """Fill in the default run dir once: runs/<arch>-<hash of the data path and the training math>.
        The same command (on any node, at any time, with more --epochs) finds the same run and resumes it.
        Only values that differ from the defaults enter the hash, so a new option leaves old names alone;
        the data path is hashed as typed (relative paths go with the relative runs/ folder)."""
        if self.run_dir:
            return self
        import hashlib
        import json

        defaults = RunConfig().training_math()
        key = {k: v for k, v in self.training_math().items() if v != defaults.get(k)}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return dataclasses.replace(self, run_dir=os.path.join("runs", f"{self.arch}-{digest}"))

    def with_absolute_paths(self) -> RunConfig:
        """The paths made absolute (data, run dir, weights, a resume checkpoint): what config.toml records,
        so `distrain launch --config RUN_DIR/config.toml` and job.sbatch work from any folder."""
        absolute = {name: os.path.abspath(getattr(self, name)) for name in PATH_FIELDS if getattr(self, name)}
        if self.resume not in ("auto", "never"):
            absolute["resume"] = os.path.abspath(self.resume)
        return dataclasses.replace(self, **absolute)

    def to_toml_dict(self) -> dict:
        """Plain TOML-able values: None is left out (TOML has no null), tuples are lists."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def option_fields() -> list[dataclasses.Field]:
    return list(fields(RunConfig))


def field_types() -> dict[str, object]:
    return typing.get_type_hints(RunConfig)
