"""The model: any torchvision classifier by name, its head fitted to the data, wrapped for the strategy."""

from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torchvision

from distrib import checkpoint
from distrib.env import DistEnv

log = logging.getLogger("distrain")


def build_model(arch: str, num_classes: int, pretrained: bool, weights_path: str | None, env: DistEnv) -> nn.Module:
    """torchvision.models.get_model; with weights, the classifier head is replaced if the class count differs."""
    if pretrained:
        model = _download_once_per_node(arch, env)
    else:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes if not weights_path else 1000)
        if weights_path:
            state = checkpoint.load(weights_path)  # weights_only=True: a file that would run code is refused
            state = state.get("model", state)
            model = _fit_head_to(model, _head_size(state))
            model.load_state_dict(_strip_module_prefix(state))
    return _fit_head_to(model, num_classes)


def _download_once_per_node(arch: str, env: DistEnv) -> nn.Module:
    """Local rank 0 downloads torchvision's default weights; the node's other ranks wait, then read the cache."""
    from distrib.process_group import barrier

    if not env.is_local_main:
        barrier()
    model = torchvision.models.get_model(arch, weights="DEFAULT")
    if env.is_local_main:
        barrier()
    return model


def _strip_module_prefix(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


def _head_size(state: dict) -> int | None:
    """Rows of the last 2-D weight in a state dict: the classifier's class count."""
    weights = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    return weights[-1].shape[0] if weights else None


def _fit_head_to(model: nn.Module, num_classes: int | None) -> nn.Module:
    """Replace the final nn.Linear when it predicts another number of classes (fine-tuning)."""
    if num_classes is None:
        return model
    name, layer = _last_linear(model)
    if layer is None or layer.out_features == num_classes:
        return model
    log.info("replacing classifier %s: %d -> %d classes", name, layer.out_features, num_classes)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], nn.Linear(layer.in_features, num_classes, bias=layer.bias is not None))
    return model


def _last_linear(model: nn.Module) -> tuple[str, nn.Linear | None]:
    found = ("", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    return found


def wrap_model(model: nn.Module, strategy: str, device: torch.device, env: DistEnv, sync_bn: bool,
               bucket_mb: int = 25, static_graph: bool = True) -> nn.Module:
    """DDP for one process per device, nn.DataParallel for the single-process fallback, or the bare model."""
    if strategy == "dp":
        if device.type == "cuda" and torch.cuda.device_count() > 1:
            log.warning("nn.DataParallel over %d GPUs; --strategy ddp is faster", torch.cuda.device_count())
        # DataParallel runs the plain module when no GPU is visible, so the fallback also works on CPU.
        return nn.DataParallel(model)
    if not env.is_distributed:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,  # saves a gradient copy per bucket
        bucket_cap_mb=bucket_mb,
        # torchvision classifiers run the same graph every step: lets DDP skip bookkeeping (but gradient
        # accumulation's no_sync steps break the one-reduction-per-forward pattern it assumes)
        static_graph=static_graph,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model without DDP/DataParallel/compile wrappers: what checkpoints store."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
