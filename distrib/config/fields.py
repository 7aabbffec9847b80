"""How an option is declared: its help panel, help text, and the bounds, choices or form its value must have.

`opt(...)` puts all of that in the field's metadata, beside the field; `check_field` is the one generic
check of a value against it (validate.py loops it over every field). Torch-free, file-system-free.
"""

from __future__ import annotations

import re
from dataclasses import field

TOPOLOGY, SLURM, TRAINING, RUNTIME = "Topology", "SLURM cluster", "Training", "Run"


class ConfigError(ValueError):
    """Bad user input: the message says what was given, what is expected, and how to fix it."""


def opt(default, group: str, help: str, *, choices: tuple[str, ...] | None = None, min=None, max=None,
        above=None, below=None, form=None, fix: str | None = None):
    """One option. Bounds: min/max are inclusive, above/below exclusive. form(value) -> None when the value
    is well formed, else what is wrong ("is not HOST:PORT; use e.g. ..."); for a tuple, each item is checked.
    fix: how to mend a value out of bounds or choices (default: an example, the option's default)."""
    meta = {"group": group, "help": help, "choices": choices, "min": min, "max": max, "above": above,
            "below": below, "form": form, "fix": fix}
    return field(default=default, metadata=meta)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------- the generic check of one value

def check_field(f, value) -> str | None:
    """What is wrong with this field's value, as one line (None: nothing): choices, then bounds, then form.
    (Types are checked just before, in validate.py.)"""
    if value is None:
        return None
    meta = f.metadata
    items = value if isinstance(value, tuple) else (value,)
    if meta["choices"] and value not in meta["choices"]:
        fix = meta["fix"] or "use one of them"
        return f"{flag(f.name)} {value!r} is not one of {', '.join(meta['choices'])}; {fix}"
    problem = _out_of_bounds(meta, value)
    if problem:
        return f"{flag(f.name)} {value} {problem}; {meta['fix'] or _example(f)}"
    if meta["form"]:
        for item in items:
            problem = meta["form"](item)
            if problem:
                return f"{flag(f.name)} {item!r} {problem}"
    return None


def _out_of_bounds(meta: dict, value) -> str | None:
    lo, hi, above, below = meta["min"], meta["max"], meta["above"], meta["below"]
    if lo is None and hi is None and above is None and below is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "is not a number"
    ok = ((lo is None or value >= lo) and (hi is None or value <= hi)
          and (above is None or value > above) and (below is None or value < below))
    if ok:
        return None
    has_lo, has_hi = lo is not None or above is not None, hi is not None or below is not None
    if has_lo and has_hi:
        left = f"[{lo}" if lo is not None else f"({above}"
        right = f"{hi}]" if hi is not None else f"{below})"
        return f"must be between {lo if lo is not None else above} and {hi if hi is not None else below}, " \
               f"in {left}, {right}"
    if hi is not None:
        return f"must be at most {hi}"
    if below is not None:
        return f"must be below {below}"
    if above == 0:
        return "must be positive"
    if above is not None:
        return f"must be above {above}"
    return "is negative" if lo == 0 else f"must be at least {lo}"


def _example(f) -> str:
    if f.default is None:
        return "or leave it out"
    return f"e.g. {flag(f.name)} {f.default} (the default)"


# ---------------------------------------------------------------- forms: values with a shape

def matches(pattern: str, problem: str, flags: int = 0):
    regex = re.compile(pattern, flags)
    return lambda value: None if regex.fullmatch(value) else problem


nodes_form = matches(r"\d+(?::\d+)?", "is not N or MIN:MAX; use e.g. --nodes 2 or --nodes 1:4")


def endpoint_form(value: str) -> str | None:
    host, _, port = value.rpartition(":") if ":" in value else (value, "", "1")  # no port: torchrun's default
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "is not HOST:PORT; use e.g. --rdzv-endpoint node01:29400"
    return None


profile_form = matches(r"\d+:[1-9]\d*", "is not START:STEPS; use e.g. --profile 10:5 (skip 10 steps, then "
                       "trace 5)")


# --time forms sbatch accepts: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
_TIME = re.compile(r"(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)")
TIME_PROBLEM = ("is not a SLURM time; use MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, e.g. --time 24:00:00 "
                "or --time 2-00:00:00")


def time_limit_seconds(value: str) -> int | None:
    """Seconds in a SLURM --time value; None for INFINITE/UNLIMITED; ConfigError when malformed."""
    if value.upper() in ("INFINITE", "UNLIMITED"):
        return None
    m = _TIME.fullmatch(value)
    if not m:
        raise ConfigError(f"--time {value!r} {TIME_PROBLEM}")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "d" in g:
        return ((g["d"] * 24 + g["dh"]) * 60 + g.get("dm", 0)) * 60 + g.get("ds", 0)
    if "c" in g:  # HH:MM:SS
        return (g["a"] * 60 + g["b"]) * 60 + g["c"]
    return g["a"] * 60 + g.get("b", 0)  # MM or MM:SS


def time_form(value: str) -> str | None:
    ok = value.upper() in ("INFINITE", "UNLIMITED") or _TIME.fullmatch(value)
    return None if ok else TIME_PROBLEM


def slurm_name(name: str):
    return matches(r"[\w.,:+@-]+", f"is not a SLURM name; use letters, digits and _ . , : + @ - only, "
                   f"e.g. --{name} gpu", re.ASCII)


MEM_FORM = matches(r"\d+[KMGT]?", "is not a SLURM memory size; use a number with an optional K, M, G or T "
                   "suffix, e.g. --mem 64G, or --mem 0 for all of the node's memory", re.IGNORECASE)

# Options distrain writes itself: passing them again would contradict the run's topology or requeue logic.
_OWNED = {
    "--nodes": "--nodes", "--ntasks": "--nodes/--gpus/--procs", "--ntasks-per-node": "--gpus/--procs",
    "--gpus": "--gpus", "--gpus-per-node": "--gpus", "--gres": "--gpus and --gpu-directive",
    "--cpus-per-task": "--cpus-per-gpu", "--mem": "--mem", "--time": "--time", "--partition": "--partition",
    "--account": "--account", "--qos": "--qos", "--exclusive": "--exclusive", "--output": "--run-dir",
    "--error": "--run-dir", "--open-mode": "--run-dir", "--signal": "--signal-seconds",
    "--requeue": "--max-requeues", "--no-requeue": "--max-requeues 0",
}


def sbatch_arg_form(arg: str) -> str | None:
    if not arg.startswith("--") or len(arg) == 2:
        return ("must be one long option, e.g. --sbatch-arg --constraint=a100 (write short options in their "
                "long form)")
    owned = _OWNED.get(arg.partition("=")[0])
    return f"sets what distrain writes itself; use {owned} instead" if owned else None
