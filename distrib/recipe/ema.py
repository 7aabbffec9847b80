"""Exponential moving average of the weights, with torchvision's semantics (references/classification).

    ema = ModelEMA.for_run(model, cfg, world_size)          # None unless --model-ema
    ema.after_step(model, step_in_epoch, epoch)             # every optimizer step; updates every --ema-steps
    evaluate(ema.module, ...)                               # after ema.sync() on every rank

torchvision: AveragedModel(use_buffers=True) with avg = decay * avg + (1 - decay) * param, updated when the
step index within the epoch is a multiple of --model-ema-steps, its average reset (so it copies the weights)
during warmup, and the decay adjusted so that the EMA's horizon is the same whatever the world size, batch
and update interval: alpha = min(1, (1 - decay) * world * batch * ema_steps / epochs). distrain's global
batch counts --accum-steps too (one update per optimizer step).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

from distrib.config import RunConfig


def adjusted_decay(cfg: RunConfig, world_size: int) -> float:
    """The decay applied at each update, after torchvision's adjustment."""
    adjust = cfg.global_batch(world_size) * cfg.ema_steps / cfg.epochs
    return 1.0 - min(1.0, (1.0 - cfg.ema_decay) * adjust)


class ModelEMA(AveragedModel):
    def __init__(self, model: nn.Module, decay: float, ema_steps: int, warmup_epochs: float):
        def ema_avg(avg, param, num_averaged):  # torchvision's ExponentialMovingAverage, term for term
            return decay * avg + (1 - decay) * param

        super().__init__(model, avg_fn=ema_avg, use_buffers=True)
        self.decay, self.ema_steps, self.warmup_epochs = decay, ema_steps, warmup_epochs

    @classmethod
    def for_run(cls, model: nn.Module, cfg: RunConfig, world_size: int) -> "ModelEMA | None":
        if not cfg.model_ema:
            return None
        return cls(model, adjusted_decay(cfg, world_size), cfg.ema_steps, cfg.warmup_epochs)

    def after_step(self, model: nn.Module, step_in_epoch: int, epoch: int) -> None:
        """step_in_epoch: 0-based index of the optimizer step just taken (torchvision's `i`)."""
        if step_in_epoch % self.ema_steps:
            return
        self.update_parameters(model)
        if epoch < self.warmup_epochs:
            self.n_averaged.fill_(0)  # keep copying the weights while the lr warms up

    @torch.no_grad()
    def sync(self) -> None:
        """Rank 0's averaged BatchNorm statistics on every rank. Parameters agree already (DDP), but each rank
        averages its own running statistics; validation and checkpoints use rank 0's, as the raw model
        does (DDP broadcasts rank 0's buffers at every forward)."""
        if dist.is_available() and dist.is_initialized():
            for buf in self.module.buffers():
                dist.broadcast(buf, src=0)
