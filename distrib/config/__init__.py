"""The run config: one definition of every option, shared by the CLI, the launcher and every rank.

    fields.py      opt(): an option's panel, help, bounds, choices and form; the generic check of one value
    sections.py    the sections (topology, slurm, data, model, optimisation, recipe, run), frozen dataclasses
    run_config.py  RunConfig: all sections, flat (`cfg.lr`), frozen; derived values (global batch, run dir)
    validate.py    THE validate(): every field against its declaration, then the cross-field rules
    toml_io.py     --config files and RUN_DIR/config.toml; resolve() (the precedence rule)
    recipes.py     named recipes

The Typer options of launch/ are generated from RunConfig's fields (launch/options.py), so an option is
declared exactly once. This package never imports torch.
"""

from distrib.config import recipes
from distrib.config.fields import RUNTIME, SLURM, TOPOLOGY, TRAINING, ConfigError, time_limit_seconds
from distrib.config.run_config import NOT_TRAINING_MATH, SECTIONS, RunConfig, field_types, option_fields
from distrib.config.toml_io import load_toml, read_run_config, resolve, write_run_config

__all__ = ["NOT_TRAINING_MATH", "RUNTIME", "SECTIONS", "SLURM", "TOPOLOGY", "TRAINING",
           "ConfigError", "RunConfig", "field_types", "load_toml", "option_fields", "read_run_config",
           "recipes", "resolve", "time_limit_seconds", "write_run_config"]
