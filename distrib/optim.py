"""Optimiser and learning-rate schedule: SGD with momentum, linear scaling, warmup, step or cosine decay."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from distrib.config import RunConfig
from distrib.param_groups import param_groups


def scaled_lr(cfg: RunConfig, global_batch: int) -> float:
    """--lr is given per 256 images; linear scaling rule (Goyal et al. 2017)."""
    return cfg.lr * global_batch / 256


def build_optimizer(model: nn.Module, cfg: RunConfig, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(model, cfg, lr), lr=lr, momentum=cfg.momentum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    """A per-step LambdaLR: linear warmup, then x0.1 every step_size epochs or a cosine to zero."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 0.1 ** (step // (cfg.step_size * steps_per_epoch))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
