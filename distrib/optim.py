"""Optimiser and learning-rate schedule: SGD with momentum, linear scaling, warmup, step or cosine decay."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from distrib.config import RunConfig


def scaled_lr(cfg: RunConfig, global_batch: int) -> float:
    """--lr is given per 256 images; linear scaling rule (Goyal et al. 2017)."""
    return cfg.lr * global_batch / 256


def rescale_lr(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """After a resume: the base LR is this attempt's scaled_lr, even if the checkpoint was written by a
    world of another size (its optimizer and scheduler state carry the old base). A no-op otherwise."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["initial_lr"] = lr
        group["lr"] = lr * factor(scheduler.last_epoch)  # exactly LambdaLR's own formula
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def build_optimizer(model: nn.Module, cfg: RunConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.decay_norm_bias:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    else:
        # Norm scales and biases are 1-D: decaying them only hurts (torchvision's --norm-weight-decay 0).
        decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)


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
