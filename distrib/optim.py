"""Parameter groups: which parameters are decayed (the optimizers and schedules are in distrib/recipe/optim.py)."""

from __future__ import annotations

import torch.nn as nn

from distrib.config import RunConfig


def param_groups(model: nn.Module, cfg: RunConfig) -> list[dict]:
    if cfg.decay_norm_bias:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
    # Norm scales and biases are 1-D: decaying them only hurts (torchvision's --norm-weight-decay 0).
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
