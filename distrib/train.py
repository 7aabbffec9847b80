"""One rank of a distrain run, top to bottom: environment, process group, data, model, loop, checkpoints.

torchrun starts this on every process (`python -m distrib train RUN_DIR/config.toml`); `distrain train`
runs it in place as a single process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record

from distrib.checkpoint import Checkpointer
from distrib.config import ConfigError, RunConfig, recipes
from distrib.data.loaders import build_loaders, to_device
from distrib.metrics import setup_logging, writer_for
from distrib.model import build_model, training_loss, wrap_model
from distrib.precision import AMP_DTYPES, resolve_precision
from distrib.recipe.ema import adjusted_decay
from distrib.recipe.mix import Mixer, soft_cross_entropy
from distrib.report.watch import Watch
from distrib.runtime.env import DistEnv, cpu_cores
from distrib.runtime.monitor import StepMonitor
from distrib.runtime.process_group import all_reduce_sum, pick_device, process_group
from distrib.runtime.stop import StopRequest
from distrib.runtime.watchdog import Heartbeat
from distrib.state import TrainState
from distrib.validation import evaluate
from distrib.words import flag, position_words

log = logging.getLogger("distrain")
@record  # writes the rank's traceback where torchrun shows it in the failure summary
def main(cfg: RunConfig) -> str:
    """Train to the end ('done') or to a stop request ('stopped')."""
    env = DistEnv.from_environ()
    setup_logging(env.rank, cfg.run_dir)
    device = pick_device(env, cfg.device)
    cfg = resolve_precision(cfg, device)
    stop = StopRequest.install(cfg.run_dir)
    with process_group(env, device, cfg.dist_timeout):
        heartbeat = Heartbeat(env, cfg.dist_timeout, cfg.run_dir)
        try:
            return train(cfg, env, device, stop, heartbeat)
        except RuntimeError as e:
            hung = heartbeat.explain(e)
            if hung is None:
                raise
            log.error("%s", hung)
            raise hung from e
        finally:
            heartbeat.close()


@dataclasses.dataclass
class Loop:
    """What stays fixed through a run: the wrapped model, the settings, and this rank's side effects."""
    net: nn.Module                 # DDP / DataParallel / compiled view of state.model
    cfg: RunConfig
    env: DistEnv
    device: torch.device
    steps_per_epoch: int           # optimizer steps; each takes --accum-steps loader batches
    mixer: Mixer | None
    writer: object
    stop: StopRequest
    heartbeat: Heartbeat
    monitor: StepMonitor           # step-level figures every --log-interval steps, and the epoch's data wait
    skipped_seen: set = dataclasses.field(default_factory=set)
    watch: Watch = dataclasses.field(default_factory=Watch.idle)  # pictures, HPARAMS, profiler (report/watch.py)

    def note_skipped(self, paths: list[str]) -> None:
        for p in paths:
            if p not in self.skipped_seen:
                self.skipped_seen.add(p)
                log.warning("skipped unreadable image %s", p)


def train(cfg: RunConfig, env: DistEnv, device: torch.device, stop: StopRequest, heartbeat: Heartbeat) -> str:
    seed_everything(cfg.seed)
    loaders = build_loaders(cfg, env, pin_memory=device.type == "cuda")
    model = build_model(cfg.arch, len(loaders.classes), cfg.pretrained, cfg.weights,
                        freeze_backbone=cfg.freeze_backbone).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = loaders.train_sampler.batches_per_epoch // cfg.accum_steps
    if steps_per_epoch == 0:
        raise ConfigError(f"{loaders.train_sampler.batches_per_epoch} batches per epoch cannot make one step of "
                          f"--accum-steps {cfg.accum_steps}; lower --accum-steps or --batch-size")
    state = TrainState.create(model, cfg, env.world_size, steps_per_epoch, device)
    checkpointer = Checkpointer(cfg, env, loaders.classes, steps_per_epoch)
    checkpointer.resume(state)
    state.follow_world_size(cfg, loaders.train_sampler.batches_per_epoch)  # an elastic restart: lr, position
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed + env.rank)  # per-rank stream for anything after model init
    net = wrap_model(model, cfg.strategy, device, env, cfg.sync_bn, cfg.bucket_mb, static_graph=cfg.accum_steps == 1)
    if cfg.compile:
        net = torch.compile(net)
    loop = Loop(net, cfg, env, device, steps_per_epoch, Mixer.from_config(cfg, len(loaders.classes)),
                writer_for(env.rank, cfg.run_dir, cfg.log_interval, purge_step=state.progress.step + 1), stop,
                heartbeat, StepMonitor(cfg.log_interval, env, device, model, steps_per_epoch, cfg.epochs,
                                       cfg.accum_steps, time_compute=not cfg.compile))
    progress = state.progress
    loop.writer.start(cfg.to_toml_dict(), _summary(cfg, env, device, loaders, progress), progress.epoch,
                      gpu=device.type == "cuda")
    loop.watch = Watch.start(cfg, env, loop.writer, loaders.classes, device, progress)

    amp_dtype = AMP_DTYPES[cfg.amp]
    val = {"acc1": 0.0}
    for epoch in range(progress.epoch, cfg.epochs):
        loaders.train_sampler.set_epoch(epoch, progress.batch)
        sums, stopped = train_one_epoch(loop, state, loaders.train)
        if stopped:
            progress.partial = sums.tolist()
            checkpointer.save(state, best=False)
            log.info("stopped at %s; last.pt written. Run again to resume.",
                     position_words(epoch, progress.batch // cfg.accum_steps, steps_per_epoch))
            return "stopped"
        confusion = loop.watch.confusion()  # of the weights best.pt is chosen by
        val = evaluate(net, loaders.val, device, amp_dtype, cfg.channels_last, loop.note_skipped,
                       observe=None if state.ema is not None else confusion)
        row = _epoch_row(epoch, env, sums, val, state.scheduler.get_last_lr()[0], loop.monitor.epoch_wait_share)
        if state.ema is not None:
            state.ema.sync()
            ema_val = evaluate(state.ema.module, loaders.val, device, amp_dtype, cfg.channels_last, observe=confusion)
            row.update({"val_ema_acc1": ema_val["acc1"], "val_ema_acc5": ema_val["acc5"],
                        "val_ema_loss": ema_val["loss"]})
        loop.writer.epoch(row)
        acc1 = row["val_ema_acc1" if state.ema is not None else "val_acc1"]  # what best.pt is chosen by
        is_best = acc1 > progress.best_acc1
        loop.watch.epoch(row, is_best, confusion)
        progress = state.progress = dataclasses.replace(progress, epoch=epoch + 1, batch=0, partial=None,
                                                        best_acc1=max(progress.best_acc1, acc1))
        checkpointer.save(state, best=is_best)
        if epoch + 1 < cfg.epochs and stop.requested(device):  # asked to stop during the epoch's last step
            log.info("stopped after epoch %d; last.pt written. Run again to resume.", epoch + 1)
            return "stopped"
    loop.watch.close()
    loop.writer.close({"best_acc1": progress.best_acc1, "final_acc1": val["acc1"]})
    return "done"


def _epoch_row(epoch: int, env: DistEnv, sums: torch.Tensor, val: dict, lr: float, wait_share: float) -> dict:
    loss_sum, samples, skipped, seconds = sums.tolist()
    return {"epoch": epoch, "world_size": env.world_size, "train_loss": loss_sum / max(samples, 1),
            "val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"],
            "val_samples": val["samples"], "images_per_sec": samples / max(seconds, 1e-9),
            "epoch_seconds": seconds, "lr": lr, "skipped_images": int(skipped) + val["skipped"],
            "data_wait_share": wait_share, "node_cores": cpu_cores(), "node_procs": env.local_world_size}


def train_one_epoch(loop: Loop, state: TrainState, loader) -> tuple[torch.Tensor, bool]:
    """Optimizer steps until the epoch ends or every rank agrees to stop (only between optimizer steps, so a
    checkpoint never holds half an accumulation). Returns global (loss, samples, skipped, seconds) sums and
    whether it stopped early. The loss is accumulated on the device: no sync per step."""
    cfg, progress, device = loop.cfg, state.progress, loop.device
    loop.net.train()
    local = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, samples, skipped on this rank
    prior = torch.tensor(progress.partial or [0.0] * 4, dtype=torch.float64)
    started = time.monotonic()
    loop.writer.epoch_started()
    stopped, step_images = False, 0
    for batch in loop.monitor.timed(loader):  # times each wait for a batch
        loop.heartbeat.beat(progress.step + 1)  # "has its data for this step": a rank stuck loading stays behind
        loop.note_skipped(batch.skipped)
        local[2] += len(batch.skipped)
        images, labels = to_device(batch, device, cfg.channels_last)
        micro = progress.batch % cfg.accum_steps  # position in the accumulation
        loss = forward_backward(loop, state, images, labels, micro)
        local[0] += loss.detach().double() * labels.numel()
        local[1] += labels.numel()
        step_images += labels.numel()
        progress.batch += 1
        if micro + 1 < cfg.accum_steps:
            continue
        grad_norm = optimizer_step(loop, state, norm_wanted=loop.monitor.due(progress.step + 1))
        loop.watch.step()
        figures = loop.monitor.step(state, local[:2], grad_norm)  # every --log-interval steps, one all_gather
        if figures:
            loop.writer.figures(figures)
        loop.writer.step(progress.epoch, progress.batch // cfg.accum_steps, loop.steps_per_epoch, loss.detach(),
                         step_images * loop.env.world_size)
        step_images = 0
        if progress.batch >= loop.steps_per_epoch * cfg.accum_steps:
            break
        if loop.stop.requested(device):
            stopped = True
            break
    loop.heartbeat.pause()
    seconds = time.monotonic() - started
    sums = torch.cat([local, torch.tensor([0.0], dtype=torch.float64, device=device)])
    sums = all_reduce_sum(sums).cpu()
    sums[3] = max(seconds, 0.0)  # wall time is the same for all ranks; not a sum
    loop.monitor.end_epoch(seconds)
    return prior + sums if progress.partial else sums, stopped


def forward_backward(loop: Loop, state: TrainState, images: torch.Tensor, labels: torch.Tensor, micro: int):
    """One loader batch: mix, forward, loss / K, backward. DDP reduces gradients only on the last batch of an
    accumulation (no_sync before). Returns the batch's mean loss (soft-target loss under mixing)."""
    cfg, amp_dtype, k = loop.cfg, AMP_DTYPES[loop.cfg.amp], loop.cfg.accum_steps
    if micro == 0:
        state.optimizer.zero_grad(set_to_none=True)
    syncing = micro + 1 == k or not hasattr(loop.net, "no_sync")
    with (contextlib.nullcontext() if syncing else loop.net.no_sync()):
        with torch.autocast(loop.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if not labels.numel():  # every image of this batch was unreadable: a zero step keeps DDP in step
                loss = sum(p.sum() for p in loop.net.parameters()) * 0.0
            elif loop.mixer is not None:
                images, targets = loop.mixer(images, labels, (state.progress.step, micro, loop.env.rank))
                loss = training_loss(loop.net(images), lambda logits: soft_cross_entropy(logits, targets))
            else:
                loss = training_loss(loop.net(images), lambda logits: F.cross_entropy(
                    logits, labels, label_smoothing=cfg.label_smoothing))
        loop.watch.batch(images)  # the first batch, as the model saw it (after mixing)
        state.scaler.scale(loss / k).backward()
    return loss


def optimizer_step(loop: Loop, state: TrainState, norm_wanted: bool = False) -> torch.Tensor | None:
    """Clip (after unscaling, under fp16), step, schedule, and update the EMA. Returns the gradient norm (a
    device tensor) when clipping, or when --log-grad-norm and the monitor logs this step."""
    cfg, progress, norm = loop.cfg, state.progress, None
    if cfg.clip_grad_norm is not None or (cfg.log_grad_norm and norm_wanted):
        state.scaler.unscale_(state.optimizer)
        norm = nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad_norm or math.inf)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    progress.step += 1
    if state.ema is not None:
        state.ema.after_step(state.model, progress.batch // cfg.accum_steps - 1, progress.epoch)
    return norm


def seed_everything(seed: int | None) -> None:
    """The same seed on every rank, so model init does not depend on the world size."""
    if seed is None:
        torch.backends.cudnn.benchmark = True
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False  # deterministic and benchmark are orthogonal (examples #549)
    torch.backends.cudnn.deterministic = True


def _summary(cfg, env, device, loaders, progress) -> str:
    where = f"{env.world_size} x {device.type}" + (f" ({torch.cuda.get_device_name(device)})"
                                                   if device.type == "cuda" else "")
    global_batch, accum = cfg.global_batch(env.world_size), cfg.accum_steps
    head = (f", head lr {cfg.scaled_lr(env.world_size) * cfg.head_lr_mult:g} (--head-lr-mult {cfg.head_lr_mult:g})"
            if cfg.head_lr_mult != 1 else "")
    per_epoch = loaders.train_sampler.batches_per_epoch * cfg.batch_size * env.world_size
    trained = (f" ({per_epoch} of them per epoch: --steps-per-epoch {cfg.steps_per_epoch})"
               if cfg.steps_per_epoch and per_epoch < loaders.num_train else "")
    lines = [
        f"distrain: {cfg.arch} on {where}, strategy {cfg.strategy}, amp {cfg.amp}, "
        f"channels_last {'on' if cfg.channels_last else 'off'}",
        f"  global batch {global_batch} ({cfg.batch_size} per process{f' x {accum} accumulated' if accum > 1 else ''}), "
        f"lr {cfg.scaled_lr(env.world_size):g} (= {cfg.lr:g} x {global_batch}/256){head}, optimizer {cfg.optimizer}, "
        f"schedule {cfg.schedule}",
        f"  {loaders.num_train} train{trained} / {loaders.num_val} val images, {len(loaders.classes)} classes",
        f"  run dir {cfg.run_dir}   tensorboard: distrain tensorboard {os.path.dirname(cfg.run_dir) or '.'}",
    ]
    if cfg.recipe:
        lines.append(f"  recipe {cfg.recipe}: {recipes.flags(cfg.recipe, cfg)}")
        note = recipes.batch_note(cfg.recipe, global_batch)
        lines += [f"  note: {note}"] if note else []
    recipe_bits = [f"auto-augment {cfg.auto_augment}"] if cfg.auto_augment != "none" else []
    recipe_bits += [f"{flag(name)} {getattr(cfg, name):g}" for name in
                    ("random_erase", "mixup_alpha", "cutmix_alpha", "label_smoothing") if getattr(cfg, name)]
    recipe_bits += [f"ra-reps {cfg.ra_reps}"] if cfg.ra_reps > 1 else []
    if recipe_bits:
        lines.append("  training with " + ", ".join(recipe_bits))
    if cfg.model_ema:
        lines.append(f"  EMA of the weights every {cfg.ema_steps} steps (decay {adjusted_decay(cfg, env.world_size):.6g} "
                     "per update); best.pt is chosen by the EMA's val acc1")
    if progress.epoch or progress.batch:
        lines.append(f"  resuming at {position_words(progress.epoch, progress.batch // cfg.accum_steps, None)}")
    if progress.world_size and progress.world_size != env.world_size:
        lines.append(f"  world size changed {progress.world_size} -> {env.world_size} since the checkpoint: global "
                     f"batch {cfg.global_batch(progress.world_size)} -> {global_batch}; lr follows it (linear "
                     f"scaling) {cfg.scaled_lr(progress.world_size):g} -> {cfg.scaled_lr(env.world_size):g}")
    return "\n".join(lines)
