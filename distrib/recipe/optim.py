"""Optimizers and learning-rate schedules, one table entry each.

    optimizer = build_optimizer(model, cfg, lr)      # OPTIMIZERS[cfg.optimizer] over distrib.recipe.param_groups
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)   # per optimizer step: warmup, then SCHEDULES

The parameter groups (what is decayed, the head's lr, nothing frozen) come from distrib/recipe/param_groups.py; this module only picks the algorithm.
Hyper-parameters follow torchvision's references/classification/train.py where it has the optimizer.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from distrib.config import RunConfig
from distrib.recipe.param_groups import param_groups

OPTIMIZERS: dict[str, Callable[[list, float, RunConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, cfg: torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum),
    "nesterov": lambda groups, lr, cfg: torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True),
    "adamw": lambda groups, lr, cfg: torch.optim.AdamW(groups, lr=lr),
    # torchvision: RMSprop(eps=0.0316, alpha=0.9), the EfficientNet/MobileNet recipes' TF-style settings
    "rmsprop": lambda groups, lr, cfg: torch.optim.RMSprop(groups, lr=lr, momentum=cfg.momentum, eps=0.0316,
                                                           alpha=0.9),
}

# schedule -> factor(progress through the post-warmup steps in [0, 1], step, steps_per_epoch, cfg), before lr-min
SCHEDULES: dict[str, Callable[[float, int, int, RunConfig], float]] = {
    "step": lambda progress, step, steps_per_epoch, cfg: 0.1 ** (step // (cfg.step_size * steps_per_epoch)),
    "cosine": lambda progress, step, steps_per_epoch, cfg: 0.5 * (1 + math.cos(math.pi * min(1.0, progress))),
}


def build_optimizer(model: nn.Module, cfg: RunConfig, lr: float) -> torch.optim.Optimizer:
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg, lr), lr, cfg)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig, steps_per_epoch: int):
    """A per-step LambdaLR: linear warmup, then the schedule; cosine ends at --lr-min (as torchvision's
    eta_min; both --lr and --lr-min are per 256 images, so their ratio holds at any global batch)."""
    total = cfg.epochs * steps_per_epoch
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    floor = cfg.lr_min / cfg.lr if cfg.schedule == "cosine" else 0.0
    schedule = SCHEDULES[cfg.schedule]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * schedule(progress, step, steps_per_epoch, cfg)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
