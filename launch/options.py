"""Typer options generated from RunConfig's fields, so every option is declared once (distrib/config/).

`run_options(groups)` decorates a command: the command receives `cli`, the options the user actually typed
(click's ParameterSource), which `distrib.config.resolve` merges over --config and the defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing

import typer

from distrib.config import field_types, option_fields

EXAMPLES_PANEL = "Examples"


@functools.cache
def _field_types() -> dict[str, object]:
    return field_types()  # evaluating annotations is slow: once, not per option


def _typer_option(f: dataclasses.Field) -> tuple[object, object]:
    """(annotation, typer.Option) for one RunConfig field."""
    hint = _field_types()[f.name]
    meta = f.metadata
    flag = "--" + f.name.replace("_", "-")
    default = f.default
    decls = [f"{flag}/--no-{flag[2:]}"] if hint is bool else [flag]
    kwargs = dict(help=meta["help"], rich_help_panel=meta["group"])
    if meta.get("choices"):
        hint = typing.Literal[meta["choices"]]
    if typing.get_origin(hint) is tuple:  # a repeatable option (RunConfig keeps it as a tuple)
        hint, default = list[str], None  # typer wants a list, and None for "not given"
    return hint, typer.Option(default, *decls, **kwargs)


def _typed(ctx: typer.Context, name: str) -> bool:
    """Did the user type this option? (typer vendors click, so compare the source enum by name)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def run_options(*groups: str, skip: tuple[str, ...] = ()):
    """Add the RunConfig options of `groups` to a Typer command as keyword parameters."""
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
        for f in chosen:
            hint, option = _typer_option(f)
            params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=hint))
            annotations[f.name] = hint

        @functools.wraps(command)
        def wrapper(ctx: typer.Context, **kwargs):
            cli = {k: v for k, v in kwargs.items() if k in names and _typed(ctx, k)}
            return command(cli=cli, **{k: v for k, v in kwargs.items() if k not in names})

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
