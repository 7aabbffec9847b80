"""What a `distrain export` folder holds: its file names and model.json, read in one place (torch-free:
`predict --model` and `--weights EXPORT_DIR` use it)."""

from __future__ import annotations

import json
import os

from distrib.config import ConfigError

MODEL_JSON = "model.json"
STATE_PREFIX = "net."   # the torchvision model's keys inside export.Normalized (weights.py strips it)


def read_model_json(folder: str, formats: tuple[str, ...], missing: str, wrong: str) -> dict:
    """model.json of an export in one of `formats`; else ConfigError with `missing` (no model.json) or
    `wrong` (another format; "{format}" in it is replaced by the folder's)."""
    path = os.path.join(folder, MODEL_JSON)
    if not os.path.isfile(path):
        raise ConfigError(missing)
    with open(path) as fh:
        meta = json.load(fh)
    if meta.get("format") not in formats:
        raise ConfigError(wrong.replace("{format}", str(meta.get("format"))))
    return meta
