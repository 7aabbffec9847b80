"""Config files: --config FILE.toml (keys are the long option names) and RUN_DIR/config.toml.

Precedence: command line > --config file > --recipe > defaults (`resolve`). Whatever is read is validated:
the launcher's config (`resolve`) and every rank's (`read_run_config`) go through RunConfig.validate().
"""

from __future__ import annotations

import os
import typing

from distrib.config.fields import ConfigError
from distrib.config.run_config import RunConfig, field_types


def _coerce(name: str, value, hint) -> object:
    """Check one value read from a TOML file against the field's type."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None and type(None) in typing.get_args(hint):
        return None
    if origin is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"config key {name!r}: expected a list of strings, got {value!r}")
    want = args[0] if args else hint
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is str and name == "nodes" and isinstance(value, int):
        return str(value)
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key {name!r}: expected {want.__name__}, got {type(value).__name__} {value!r}")


def load_toml(path: str) -> dict:
    """Read a config file into {field: value}; unknown keys and wrong types are errors naming the key."""
    import tomllib  # only when a file is read: the CLI's --help stays fast

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        hint = os.path.join(path, "config.toml")
        hint = f"; did you mean --config {hint}?" if os.path.isfile(hint) else "; give a .toml file"
        raise ConfigError(f"--config {path} is a directory{hint}") from None
    except PermissionError:
        raise ConfigError(f"--config {path}: permission denied; make it readable") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file; give a .toml file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    hints = field_types()
    out = {}
    for key, value in raw.items():
        if key not in hints:
            close = [f for f in hints if f.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"config key {key!r} in {path} is not an option{hint}; remove it or fix its name")
        out[key] = _coerce(key, value, hints[key])
    return out


def resolve(cli: dict, config_file: str | None = None) -> RunConfig:
    """The one precedence rule: command line > config file > --recipe > defaults; validated."""
    from distrib.config.recipes import expand

    from_file = load_toml(config_file) if config_file else {}
    merged = expand(cli.get("recipe", from_file.get("recipe")))
    merged.update(from_file)
    merged.update(cli)
    return RunConfig(**merged).validate()


def read_run_config(path: str) -> RunConfig:
    """What a rank does: read RUN_DIR/config.toml as written by the launcher, and validate it."""
    try:
        return RunConfig(**load_toml(path)).validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def write_run_config(cfg: RunConfig, path: str) -> None:
    import tomli_w

    from distrib.files import write_atomic

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_atomic(path, tomli_w.dumps(cfg.with_absolute_paths().to_toml_dict()))
