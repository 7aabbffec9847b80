"""Batch mixing on the device: mixup and CutMix as torchvision.transforms.v2 does them, with soft targets.

    mixer = Mixer.from_config(cfg, num_classes)            # None when neither --mixup-alpha nor --cutmix-alpha
    images, targets = mixer(images, labels, key)           # key = (seed, step, rank): exact on resume
    loss = soft_cross_entropy(logits, targets)

Each batch gets one of the enabled mixes (torchvision's RandomChoice([MixUp, CutMix]): equal odds). Both pair
every image with the next one in the batch (batch.roll(1)), as torchvision does. Targets are one-hot with
--label-smoothing applied, then mixed with the same weight as the pixels, so each row sums to 1.
The random draws come from a generator keyed by (seed, optimizer step, micro-batch, rank) alone, so a resumed
run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def mixup(images: torch.Tensor, rng: random.Random, alpha: float) -> tuple[torch.Tensor, float]:
    """lam * x + (1 - lam) * x.roll(1); returns the images and lam (the weight of the original labels)."""
    lam = rng.betavariate(alpha, alpha)
    return images.roll(1, 0).mul_(1.0 - lam).add_(images.mul(lam)), lam


def cutmix(images: torch.Tensor, rng: random.Random, alpha: float) -> tuple[torch.Tensor, float]:
    """A box of x.roll(1) pasted into x: torchvision's box (centre uniform, sides sqrt(1 - lam), clipped);
    lam is then the area fraction of the original that is left."""
    lam = rng.betavariate(alpha, alpha)
    h, w = images.shape[-2:]
    cx, cy = rng.randrange(w), rng.randrange(h)
    r = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(r * w), int(r * h)
    x1, y1 = max(cx - half_w, 0), max(cy - half_h, 0)
    x2, y2 = min(cx + half_w, w), min(cy + half_h, h)
    out = images.clone()
    out[..., y1:y2, x1:x2] = images.roll(1, 0)[..., y1:y2, x1:x2]
    return out, 1.0 - (x2 - x1) * (y2 - y1) / (w * h)


MIXES = {"mixup": mixup, "cutmix": cutmix}


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot rows with label smoothing as nn.CrossEntropyLoss applies it: (1 - s) * onehot + s / C."""
    return F.one_hot(labels, num_classes).float().mul_(1.0 - smoothing).add_(smoothing / num_classes)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


@dataclass(frozen=True)
class Mixer:
    alphas: dict            # mix name -> Beta alpha, only the enabled ones
    num_classes: int
    smoothing: float
    seed: int

    @classmethod
    def from_config(cls, cfg, num_classes: int) -> "Mixer | None":
        alphas = {name: a for name, a in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha)) if a > 0}
        return cls(alphas, num_classes, cfg.label_smoothing, cfg.seed or 0) if alphas else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random("mix/" + "/".join(map(str, (self.seed, *key))))
        name = sorted(self.alphas)[rng.randrange(len(self.alphas))] if len(self.alphas) > 1 else next(iter(self.alphas))
        targets = soft_targets(labels, self.num_classes, self.smoothing)
        if len(labels) < 2:  # nothing to pair with
            return images, targets
        images, lam = MIXES[name](images, rng, self.alphas[name])
        return images, targets.roll(1, 0).mul_(1.0 - lam).add_(targets.mul(lam))
