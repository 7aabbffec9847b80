"""Which parameters the optimizer updates, in which groups: weight decay or not, the classifier's own
learning rate (--head-lr-mult), and nothing frozen (--freeze-backbone: requires_grad False).

Every optimizer of distrib/recipe/optim.py takes these groups; each group carries its own "lr", which the
learning-rate schedule then scales, so the head keeps its multiple through warmup and decay.
"""

from __future__ import annotations

import torch.nn as nn

from distrib.weights import class_layers, in_class_layers


def param_groups(model: nn.Module, cfg, lr: float) -> list[dict]:
    """Non-empty groups, backbone first (the first group's lr is the one logged as the run's lr)."""
    head = class_layers(model) if cfg.head_lr_mult != 1 else []
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # frozen: the optimizer must not touch it (weight decay would still move it)
        in_head = in_class_layers(name, head)
        # Norm scales and biases are 1-D: decaying them only hurts (torchvision's --norm-weight-decay 0).
        decays = cfg.decay_norm_bias or p.ndim > 1
        groups.setdefault((in_head, decays), []).append(p)
    return [{"params": params, "lr": lr * (cfg.head_lr_mult if in_head else 1.0),
             "weight_decay": cfg.weight_decay if decays else 0.0}
            for (in_head, decays), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))]
