"""The model: any torchvision classifier by name, its head fitted to the data, wrapped for the strategy."""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn as nn
import torchvision

from distrib import weights
from distrib.config import ConfigError
from distrib.runtime.env import DistEnv

log = logging.getLogger("distrain")


# Archs with auxiliary classifiers return a namedtuple (logits, aux logits...) in training mode; their
# papers add each auxiliary loss with a weight: GoogLeNet 0.3, Inception v3 0.4. (Eval mode: logits only.)
AUX_LOSS_WEIGHTS = {"GoogLeNetOutputs": 0.3, "InceptionOutputs": 0.4}


def training_loss(output, loss_of):
    """loss_of(logits), plus the weighted losses of the auxiliary classifiers where the arch has them."""
    weight = AUX_LOSS_WEIGHTS.get(type(output).__name__)
    if weight is None:
        return loss_of(output)
    logits, *aux = output
    return loss_of(logits) + weight * sum(loss_of(a) for a in aux if a is not None)


def build_model(arch: str, num_classes: int, pretrained: bool, weights_path: str | None,
                freeze_backbone: bool = False) -> nn.Module:
    """torchvision.models.get_model, from torchvision's weights (--pretrained), a weights file (--weights,
    any layout distrib/weights.py reads) or scratch; the classifier is replaced only if the class count
    differs. freeze_backbone: only the classifier trains (see freeze_all_but_head)."""
    if pretrained:
        model = weights.replace_head(_pretrained_from_cache(arch), num_classes)
    elif weights_path:
        model = weights.build_from_state(weights.read_state_dict(weights_path), weights_path, arch, num_classes)
    else:
        model = weights.scratch(arch, num_classes)
    if freeze_backbone:
        freeze_all_but_head(model)
    return model


def _pretrained_from_cache(arch: str) -> nn.Module:
    """torchvision's default weights, read from the torch hub cache. Ranks never download: compute nodes
    often have no network, and the launcher has put the file there (launch/pretrained.py)."""
    url, path = weights.pretrained_file(arch)
    if not os.path.isfile(path):
        raise ConfigError(f"--pretrained: {os.path.basename(path)} is not in the torch hub cache ({path}) on "
                          f"this node; fetch {url} into that folder, or launch where the launcher can download it")
    return torchvision.models.get_model(arch, weights="DEFAULT")  # found in the cache: no download


def from_checkpoint(ckpt: dict, ema: bool = True) -> nn.Module:
    """The model a distrain checkpoint holds: the EMA's weights when the run kept one (unless ema=False)."""
    from distrib import checkpoint

    model = weights.scratch(ckpt["arch"], len(ckpt["classes"]))
    model.load_state_dict(checkpoint.model_weights(ckpt, ema))
    return model


def freeze_all_but_head(model: nn.Module) -> None:
    """Only the classifier trains: the backbone's parameters need no gradient, and its BatchNorm layers
    stay in eval mode whatever model.train() says, so their running statistics stay bit-identical too."""
    head = weights.class_layers(model)
    for name, p in model.named_parameters():
        p.requires_grad_(weights.in_class_layers(name, head))
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not weights.in_class_layers(name, head):
            module.__class__ = _frozen(type(module))  # same object, same state_dict, only .train differs


@functools.cache
def _frozen(cls: type) -> type:
    def train(self, mode: bool = True):
        return super(frozen, self).train(False)

    frozen = type(f"Frozen{cls.__name__}", (cls,), {"train": train, "__doc__": "Always in eval mode."})
    return frozen


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
        # (--freeze-backbone: DDP registers only parameters that need a gradient, so the frozen backbone is
        # outside its buckets and the graph stays static; no find_unused_parameters needed)
    )
