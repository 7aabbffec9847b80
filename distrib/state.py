"""Everything a run changes as it trains, as one object that saves and restores itself.

    state = TrainState.create(model, cfg, world_size, steps_per_epoch)   # optimizer, schedule, scaler, EMA
    ckpt.update(state.state_dict()); state.load_state_dict(ckpt)          # what checkpoint.Checkpointer does

A resumed run is exact because nothing that decides the next step lives outside this object, the RNG
states (saved beside it) and the keys that augmentation, mixing and sampling are drawn from (seed, epoch,
step, rank, sample), which Progress holds.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from distrib.config import RunConfig
from distrib.recipe.ema import ModelEMA
from distrib.recipe.optim import build_optimizer, build_scheduler


@dataclasses.dataclass
class Progress:
    """Where the run is; saved in every checkpoint so a resumed run continues at the same step."""
    epoch: int = 0          # epoch in progress (or the next one to start)
    batch: int = 0          # loader batches of `epoch` already trained (a multiple of --accum-steps)
    step: int = 0           # optimizer steps since the start of the run
    best_acc1: float = 0.0  # best val acc1 so far (of the EMA when --model-ema)
    partial: list | None = None  # global sums of an interrupted epoch: loss, samples, skipped, seconds
    world_size: int | None = None  # of the attempt that wrote the checkpoint (an elastic restart may differ)

    FIELDS = ("epoch", "batch", "step", "best_acc1", "partial", "world_size")


@dataclasses.dataclass
class TrainState:
    model: nn.Module                    # unwrapped: no DDP, DataParallel or compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    progress: Progress
    world_size: int = 1                 # of this attempt; saved so a restart with another can tell

    @classmethod
    def create(cls, model: nn.Module, cfg: RunConfig, world_size: int, steps_per_epoch: int,
               device: torch.device) -> "TrainState":
        optimizer = build_optimizer(model, cfg, cfg.scaled_lr(world_size))
        return cls(model, optimizer, build_scheduler(optimizer, cfg, steps_per_epoch),
                   torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16"),
                   ModelEMA.for_run(model, cfg, world_size), Progress(), world_size)

    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 **{name: getattr(self.progress, name) for name in Progress.FIELDS}, "world_size": self.world_size}
        if self.ema is not None:
            state["model_ema"] = self.ema.state_dict()  # n_averaged and module.* (AveragedModel's layout)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "model_ema" in state:
                self.ema.load_state_dict(state["model_ema"])
            else:  # --model-ema switched on for a run that had none: start the average from here
                self.ema.n_averaged.zero_()
        self.progress = Progress(**{name: state.get(name, getattr(Progress(), name)) for name in Progress.FIELDS})

    def follow_world_size(self, cfg: RunConfig, batches_per_epoch: int) -> None:
        """After resuming a checkpoint written by a world of another size (an elastic restart with fewer or
        more nodes): the learning rate follows the new global batch (linear scaling, cfg.scaled_lr), every
        group by the same ratio so --head-lr-mult and the schedule's position are kept; a position inside
        an epoch becomes the same share of the epoch in the new world's batches (each rank's shard, and so
        the number of batches in an epoch, depends on the world size)."""
        before = self.progress.world_size
        if not before or before == self.world_size:
            return
        if self.progress.batch:
            k = cfg.accum_steps
            seen = self.progress.batch * before // self.world_size
            self.progress.batch = min(seen // k * k, batches_per_epoch // k * k)
        ratio = cfg.scaled_lr(self.world_size) / cfg.scaled_lr(before)
        self.scheduler.base_lrs = [lr * ratio for lr in self.scheduler.base_lrs]
        for group in self.optimizer.param_groups:
            group["initial_lr"] *= ratio
            group["lr"] *= ratio
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
