"""Weights files as people have them, turned into a plain torchvision state_dict, and fitted to an arch.

    state = read_state_dict(path)              # any layout below -> {"conv1.weight": tensor, ...}
    fit = check_fit(state, path, "resnet18")   # ConfigError in one line if the file is for another model
    model = build_from_state(state, "resnet18", num_classes=4)   # head replaced only if the count differs

Layouts: a bare state_dict; {"state_dict": ...}, {"model": ...}, {"model_state_dict": ...} (nested too);
keys prefixed `module.` (DataParallel/DDP) or `_orig_mod.` (torch.compile); `.safetensors`; distrain
checkpoints (their "model"); distrain exports (a folder with model.json, model.safetensors or model.pt2).
Never a full unpickle: torch files go through checkpoint.load (weights_only=True).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision

from distrib.checkpoint import UnusableCheckpoint, load
from distrib.config import ConfigError
from distrib.export_format import read_model_json

log = logging.getLogger("distrain")

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts keep the weights
KEY_PREFIXES = ("module.", "_orig_mod.")                   # DataParallel/DDP, torch.compile
IGNORED_SUFFIXES = ("num_batches_tracked",)                 # BatchNorm fills it in when a file lacks it


# ---------------------------------------------------------------- reading

def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Any supported weights file (or export folder) as {key: tensor}, prefixes stripped."""
    path = str(path)
    if os.path.isdir(path):
        path = _export_model_file(path)
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif path.endswith(".pt2"):
        state = _read_torch_export(path)
    else:
        state = _unwrap(load(path), path)
    return _strip_prefixes(state)


def _export_model_file(folder: str) -> str:
    """A distrain export folder: the weights file model.json names (safetensors or torch-export)."""
    try:
        meta = read_model_json(folder, ("safetensors", "torch-export"), f"{folder} is a folder without model.json; "
                               "give a weights file or a `distrain export` folder", f"{folder} is a {{format}} "
                               "export, which holds no torch weights; export with --format safetensors or give "
                               "the checkpoint")
    except ConfigError as e:
        raise UnusableCheckpoint(str(e)) from None
    return os.path.join(folder, meta["file"])


def _read_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise UnusableCheckpoint(f"{path} is not a readable safetensors file ({e}); give an intact file") from None


def _read_torch_export(path: str) -> dict:
    from distrib.export_format import STATE_PREFIX

    try:
        program = torch.export.load(path)
    except Exception as e:  # a .pt2 that is not a torch.export program: many error types
        raise UnusableCheckpoint(f"{path} is not a readable torch.export program ({type(e).__name__}); "
                                 "give the checkpoint or a safetensors export instead") from None
    return {k.removeprefix(STATE_PREFIX): v for k, v in program.state_dict.items() if k.startswith(STATE_PREFIX)}


def _unwrap(obj, path: str) -> dict:
    """Descend through {"state_dict": ...}-style wrappers to the dict whose values are tensors."""
    for _ in range(4):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    keys = ", ".join(list(obj)[:6]) if isinstance(obj, dict) else type(obj).__name__
    raise UnusableCheckpoint(f"{path} holds no state_dict (found {keys}); give a file with a state_dict, "
                             f"bare or under one of {', '.join(WRAPPER_KEYS)}")


def _strip_prefixes(state: dict) -> dict:
    def strip(key: str) -> str:
        while key.startswith(KEY_PREFIXES):
            key = next(key.removeprefix(p) for p in KEY_PREFIXES if key.startswith(p))
        return key

    return {strip(k): v for k, v in state.items()}


# ---------------------------------------------------------------- fitting

def scratch(arch: str, num_classes: int) -> nn.Module:
    """The arch, randomly initialised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def skeleton(arch: str, num_classes: int = 1000) -> nn.Module:
    """The arch with no memory behind it (meta device) when it allows; some builders compute on tensors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
        try:
            with torch.device("meta"):
                return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        except (NotImplementedError, RuntimeError):
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


# Auxiliary classifiers: extra class-score layers some archs train with (their outputs in training mode are
# namedtuples, distrib/model.py weighs their losses). They are replaced with the classifier.
AUX_CLASSIFIERS = ("aux1.fc2", "aux2.fc2", "AuxLogits.fc")  # googlenet, googlenet, inception_v3


def _class_count(layer: nn.Module) -> int | None:
    """How many class scores a layer outputs, if it can be a classifier."""
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1):
        return layer.out_channels  # squeezenet's classifier is a 1x1 convolution
    return None


def class_layers(model: nn.Module) -> list[str]:
    """The layers that output class scores, the classifier first: the model's last Linear (or 1x1 conv):
    "fc", "classifier.1", "heads.head", then any auxiliary classifiers ("aux1.fc2", "AuxLogits.fc")."""
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers or _class_count(model.get_submodule(layers[-1])) is None:
        return []
    return [layers[-1]] + [name for name in AUX_CLASSIFIERS if name in layers]


def in_class_layers(param: str, layers: list[str]) -> bool:
    """Whether a parameter name ("fc.weight") belongs to one of the class layers."""
    return any(param.startswith(f"{layer}.") for layer in layers)


@dataclass(frozen=True)
class Fit:
    missing: list[str]       # in the arch, not in the file
    unexpected: list[str]    # in the file, not in the arch
    mismatched: list[str]    # in both, with other shapes (outside the head)
    head: str | None
    file_classes: int | None  # rows of the file's classifier

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def fit(state: dict, arch: str) -> Fit:
    """Compare a state_dict with the arch's keys and shapes; the classifier may have any row count."""
    model = skeleton(arch)
    layers = class_layers(model)
    head = layers[0] if layers else None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith(IGNORED_SUFFIXES)}
    have = {k: tuple(v.shape) for k, v in state.items() if not k.endswith(IGNORED_SUFFIXES)}
    mismatched = [k for k in want.keys() & have.keys() if want[k] != have[k]
                  and not (in_class_layers(k, layers) and want[k][1:] == have[k][1:])]
    head_rows = have.get(f"{head}.weight", (None,))[0] if head else None
    return Fit(sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys()), sorted(mismatched),
               head, head_rows)


def check_fit(state: dict, path: str, arch: str) -> Fit:
    """The fit, or ConfigError in one line: counts of missing/unexpected keys and which arch fits instead."""
    result = fit(state, arch)
    if result.ok:
        return result
    parts = [f"{len(result.missing)} missing", f"{len(result.unexpected)} unexpected"]
    if result.mismatched:
        parts.append(f"{len(result.mismatched)} of another shape (e.g. {result.mismatched[0]})")
    fits = archs_that_fit(state, exclude=arch)
    hint = (f"it fits --arch {' or --arch '.join(fits)}" if fits
            else "no torchvision arch fits it; check that it is a torchvision classifier's weights")
    raise UnusableCheckpoint(f"--weights {path} does not fit --arch {arch} ({', '.join(parts)} keys); {hint}")


def _family(arch: str) -> str:
    return re.match(r"[a-z]+", arch).group()


def archs_that_fit(state: dict, exclude: str = "") -> list[str]:
    """torchvision archs this state_dict fits. One skeleton per family first (same top-level modules?),
    then every member of the families that pass: ~25 cheap builds instead of 80."""
    tops = {k.split(".")[0] for k in state}
    names = sorted(torchvision.models.list_models(module=torchvision.models))
    families: dict[str, list[str]] = {}
    for name in names:
        families.setdefault(_family(name), []).append(name)
    found = []
    for members in families.values():
        if {k.split(".")[0] for k in skeleton(members[0]).state_dict()} != tops:
            continue
        found += [a for a in members if a != exclude and fit(state, a).ok]
    return found


def build_from_state(state: dict, path: str, arch: str, num_classes: int) -> nn.Module:
    """The arch loaded with the file's weights; its classifier replaced only when the class count differs."""
    result = check_fit(state, path, arch)
    model = scratch(arch, result.file_classes or num_classes)
    model.load_state_dict(state, strict=True)
    return replace_head(model, num_classes)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Fresh class layers (the classifier and any auxiliary ones) for another class count (fine-tuning);
    the same model when the count is right."""
    for name in class_layers(model):
        layer = model.get_submodule(name)
        if _class_count(layer) == num_classes:
            continue
        log.info("replacing classifier %s: %d -> %d classes (new, randomly initialised)", name,
                 _class_count(layer), num_classes)
        bias = layer.bias is not None
        fresh = (nn.Linear(layer.in_features, num_classes, bias=bias) if isinstance(layer, nn.Linear)
                 else nn.Conv2d(layer.in_channels, num_classes, kernel_size=1, bias=bias))
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], fresh)
    return model


def pretrained_file(arch: str) -> tuple[str, str]:
    """(URL, torch hub cache path) of torchvision's default weights for arch: where --pretrained reads them."""
    try:
        url = torchvision.models.get_model_weights(arch).DEFAULT.url
    except (ValueError, AttributeError, KeyError):
        raise ConfigError(f"--pretrained: torchvision has no default weights for --arch {arch}; "
                          "train from scratch or give --weights FILE") from None
    return url, os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
