"""Typer options generated from RunConfig's fields, so every option is declared once (distrib/config/).

`run_options(groups)` decorates a command: the command receives `cli`, the options the user actually typed
(click's ParameterSource), which `distrib.config.resolve` merges over --config and the defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing

import typer

from distrib.config import field_types, option_fields

EXAMPLES_PANEL = "Examples"


@functools.cache
def _field_types() -> dict[str, object]:
    return field_types()  # evaluating annotations is slow: once, not per option


# What an option's value looks like in --help (a narrow column: the help beside it stays readable at 80
# columns, the width of a pipe or a small terminal). By field name, else by type.
METAVARS = {"data": "DIR", "run_dir": "DIR", "weights": "PATH", "resume": "auto|never|PATH", "nodes": "N|MIN:MAX",
            "rdzv_endpoint": "HOST:PORT", "time": "TIME", "mem": "SIZE", "sbatch_arg": "TEXT", "setup": "LINE",
            "partition": "NAME", "account": "NAME", "qos": "NAME", "arch": "NAME", "recipe": "NAME"}
TYPE_METAVARS = {int: "N", float: "F", str: "TEXT"}
SHORT_CHOICES = 14  # longer choice lists go into the help text, not the type column


def is_switch(hint) -> bool:
    return hint is bool or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                            and set(typing.get_args(hint)) == {bool, type(None)})


def _typer_option(f: dataclasses.Field, override: dict | None = None) -> tuple[object, object]:
    """(annotation, typer.Option) for one RunConfig field; `override` may replace its help and panel (eval
    and predict take some training options with another meaning) and hide its default."""
    hint = _field_types()[f.name]
    meta = {**f.metadata, **(override or {})}
    flag = "--" + f.name.replace("_", "-")
    default = f.default
    decls = [flag]
    kwargs = dict(help=meta["help"], rich_help_panel=meta["group"])
    if is_switch(hint) and default is not False:  # on (or auto) by default: --no-X turns it off (negative_option)
        kwargs["help"] += f" --no-{flag[2:]}: off."
        kwargs["show_default"] = False
    if override and override.get("hide_default"):
        kwargs["show_default"] = False
    if meta.get("choices"):
        hint = typing.Literal[meta["choices"]]
        listed = "|".join(meta["choices"])
        if len(listed) <= SHORT_CHOICES:
            kwargs["metavar"] = listed
        else:
            kwargs["metavar"] = "NAME"
            kwargs["help"] += f" One of: {', '.join(meta['choices'])}."
    elif not is_switch(hint):
        base = next((t for t in typing.get_args(hint) or (hint,) if t in TYPE_METAVARS), str)
        kwargs["metavar"] = METAVARS.get(f.name, TYPE_METAVARS.get(base, "TEXT"))
    else:
        kwargs["metavar"] = " "
    if typing.get_origin(hint) is tuple:  # a repeatable option (RunConfig keeps it as a tuple)
        hint, default = list[str], None  # typer wants a list, and None for "not given"
    return hint, typer.Option(default, *decls, **kwargs)


def negative_option(f: dataclasses.Field) -> tuple[str, inspect.Parameter] | None:
    """For a switch that is on (or auto) by default, its --no-X flag as a parameter of its own, hidden from
    --help (the help of --X names it): the help table keeps no column for negatives, so it stays readable
    at 80 columns."""
    if not is_switch(_field_types()[f.name]) or f.default is False:
        return None
    name = f"no_{f.name}"
    option = typer.Option(False, f"--no-{f.name.replace('_', '-')}", hidden=True)
    return name, inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool)


def typed_options(ctx, params: dict, names=None, negatives=None) -> dict:
    """The RunConfig options the user typed ({name: value}), --no-X as X = False: what resolve() merges over
    --config and the defaults. names/negatives: the command's option fields and its no_X parameters."""
    names = names if names is not None else {f.name for f in option_fields()}
    negatives = negatives if negatives is not None else {f"no_{n}": n for n in names}
    cli = {k: v for k, v in params.items() if k in names and _typed(ctx, k)}
    return cli | {field: False for negative, field in negatives.items() if params.get(negative)}


def _typed(ctx: typer.Context, name: str) -> bool:
    """Did the user type this option? (typer vendors click, so compare the source enum by name)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def run_options(*groups: str, skip: tuple[str, ...] = (), overrides: dict | None = None):
    """Add the RunConfig options of `groups` to a Typer command as keyword parameters; `overrides` maps a
    field to {"help", "group", "hide_default"} for a command where the option means something else."""
    chosen = [f for f in option_fields() if f.metadata["group"] in groups and f.name not in skip]
    names = {f.name for f in chosen}

    def decorate(command):
        own_hints = typing.get_type_hints(command)  # resolved in the command's own module
        own = inspect.signature(command)
        own_params = [p.replace(annotation=own_hints.get(p.name, p.annotation))
                      for p in own.parameters.values() if p.name != "cli"]
        params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
        params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own_params]
        annotations = {"ctx": typer.Context, **{p.name: p.annotation for p in own_params}}
        negatives = {}  # no_X parameter -> X
        for f in chosen:
            hint, option = _typer_option(f, (overrides or {}).get(f.name))
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hint))
            annotations[f.name] = hint
            if (negative := negative_option(f)) is not None:
                params.append(negative[1])
                annotations[negative[0]] = bool
                negatives[negative[0]] = f.name

        @functools.wraps(command)
        def wrapper(ctx: typer.Context, **kwargs):
            cli = typed_options(ctx, kwargs, names, negatives)
            return command(cli=cli, **{k: v for k, v in kwargs.items() if k not in names and k not in negatives})

        wrapper.__signature__ = inspect.Signature(params)
        wrapper.__annotations__ = annotations
        del wrapper.__wrapped__  # typer must see the generated signature, not the original one
        return wrapper

    return decorate


def command_line(command: str, cli: dict, config_file=None) -> list[str]:
    """The `distrain COMMAND ...` argv that gives these typed options again (for dry runs and launch.json)."""
    argv = ["distrain", command]
    if config_file:
        argv += ["--config", str(config_file)]
    for name, value in cli.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [flag, str(item)]
        elif value is not None:
            argv += [flag, str(value)]
    return argv
