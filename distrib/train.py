"""One rank of a distrain run, top to bottom: environment, process group, data, model, loop, checkpoints.

torchrun starts this on every process (`python -m distrib train RUN_DIR/config.toml`); `distrain train`
runs it in place as a single process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
from torch.distributed.elastic.multiprocessing.errors import record

from distrib import checkpoint
from distrib.config import RunConfig
from distrib.data import Loaders, build_loaders, to_device
from distrib.env import DistEnv
from distrib.evaluate import evaluate
from distrib.model import build_model, unwrap, wrap_model
from distrib.optim import build_optimizer, build_scheduler, rescale_lr, scaled_lr
from distrib.process_group import all_reduce_sum, barrier, pick_device, process_group
from distrib.stop import StopRequest
from distrib.watchdog import Heartbeat
from distrib.writer import setup_logging, writer_for

log = logging.getLogger("distrain")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def resolve_precision(cfg: RunConfig, device: torch.device) -> RunConfig:
    """Settle the "auto" defaults for this device: bf16 and channels_last on GPUs, plain fp32 on CPU
    (where bf16 autocast is slower without AMX, and channels_last gains nothing)."""
    cuda = device.type == "cuda"
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if cuda and torch.cuda.is_bf16_supported() else "off")
    channels_last = cuda if cfg.channels_last is None else cfg.channels_last
    return dataclasses.replace(cfg, amp=amp, channels_last=channels_last)


@dataclasses.dataclass
class Progress:
    """Where the run is; saved in every checkpoint so a resumed run continues at the same step."""
    epoch: int = 0          # epoch in progress (or the next one to start)
    batch: int = 0          # batches of `epoch` already trained
    step: int = 0           # optimizer steps since the start of the run
    best_acc1: float = 0.0
    partial: list | None = None  # global sums of an interrupted epoch: loss, samples, skipped, seconds
    world_size: int | None = None  # of the attempt that wrote the checkpoint resumed from


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


def train(cfg: RunConfig, env: DistEnv, device: torch.device, stop: StopRequest, heartbeat: Heartbeat) -> str:
    seed_everything(cfg.seed)
    loaders = build_loaders(cfg, env, pin_memory=device.type == "cuda")
    model = build_model(cfg.arch, len(loaders.classes), cfg.pretrained, cfg.weights, env).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    global_batch = cfg.batch_size * env.world_size
    lr = scaled_lr(cfg, global_batch)
    steps_per_epoch = loaders.train_sampler.batches_per_epoch  # whole batches, capped by --steps-per-epoch
    optimizer = build_optimizer(model, cfg, lr)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")

    progress = resume(cfg, loaders.classes, model, optimizer, scheduler, scaler)
    rescale_lr(optimizer, scheduler, lr)  # the LR follows this attempt's global batch (world size may differ)
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed + env.rank)  # per-rank stream for anything after model init
    net = wrap_model(model, cfg.strategy, device, env, cfg.sync_bn, cfg.bucket_mb)
    if cfg.compile:
        net = torch.compile(net)

    writer = writer_for(env.rank, cfg.run_dir)
    writer.start(cfg.to_toml_dict(), _summary(cfg, env, device, global_batch, lr, loaders, progress), progress.epoch)
    skipped_seen: set[str] = set()

    def note_skipped(paths: list[str]) -> None:
        for p in paths:
            if p not in skipped_seen:
                skipped_seen.add(p)
                log.warning("skipped unreadable image %s", p)

    amp_dtype = AMP_DTYPES[cfg.amp]
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    val = {"acc1": 0.0}
    for epoch in range(progress.epoch, cfg.epochs):
        loaders.train_sampler.set_epoch(epoch, progress.batch)
        sums, stopped = train_one_epoch(net, loaders, optimizer, scheduler, scaler, criterion, device, cfg,
                                        env, progress, steps_per_epoch, writer, stop, heartbeat, note_skipped)
        if stopped:
            progress.partial = sums.tolist()
            save(cfg, env, model, optimizer, scheduler, scaler, progress, loaders.classes, best=False)
            log.info("stopped at epoch %d step %d/%d; last.pt written. Run again to resume.",
                     epoch, progress.batch, steps_per_epoch)
            return "stopped"
        val = evaluate(net, loaders.val, device, amp_dtype, cfg.channels_last, note_skipped)
        loss_sum, samples, skipped, seconds = sums.tolist()
        row = {
            "epoch": epoch, "world_size": env.world_size, "train_loss": loss_sum / max(samples, 1),
            "val_loss": val["loss"], "val_acc1": val["acc1"], "val_acc5": val["acc5"],
            "val_samples": val["samples"], "images_per_sec": samples / max(seconds, 1e-9),
            "epoch_seconds": seconds, "lr": scheduler.get_last_lr()[0],
            "skipped_images": int(skipped) + val["skipped"],
        }
        writer.epoch(row)
        is_best = val["acc1"] > progress.best_acc1
        progress = dataclasses.replace(progress, epoch=epoch + 1, batch=0, partial=None,
                                       best_acc1=max(progress.best_acc1, val["acc1"]))
        save(cfg, env, model, optimizer, scheduler, scaler, progress, loaders.classes, best=is_best)
        if epoch + 1 < cfg.epochs and stop.requested(device):  # asked to stop during the epoch's last step
            log.info("stopped after epoch %d; last.pt written. Run again to resume.", epoch)
            return "stopped"
    writer.close({"best_acc1": progress.best_acc1, "final_acc1": val["acc1"]})
    return "done"


def train_one_epoch(net, loaders: Loaders, optimizer, scheduler, scaler, criterion, device, cfg: RunConfig,
                    env: DistEnv, progress: Progress, steps_per_epoch: int, writer, stop: StopRequest,
                    heartbeat: Heartbeat, note_skipped):
    """Steps until the epoch ends or every rank agrees to stop. Returns global (loss, samples, skipped,
    seconds) sums and whether it stopped early. Loss is accumulated on the device: no sync per step."""
    net.train()
    amp_dtype = AMP_DTYPES[cfg.amp]
    local = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, samples, skipped on this rank
    prior = torch.tensor(progress.partial or [0.0] * 4, dtype=torch.float64)
    started, interval_t, interval_n = time.monotonic(), time.monotonic(), 0
    writer.epoch_started()
    stopped = False
    for batch in loaders.train:
        heartbeat.beat(progress.step + 1)  # "has its data for this step": a rank stuck loading stays behind
        note_skipped(batch.skipped)
        local[2] += len(batch.skipped)
        images, labels = to_device(batch, device, cfg.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if labels.numel():
                loss = criterion(net(images), labels)
            else:  # every image of this batch was unreadable: a zero step keeps DDP's collectives in step
                loss = sum(p.sum() for p in net.parameters()) * 0.0
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        local[0] += loss.detach().double() * labels.numel()
        local[1] += labels.numel()
        progress.batch += 1
        progress.step += 1
        interval_n += labels.numel()
        if progress.batch % cfg.log_interval == 0 or progress.batch == steps_per_epoch:
            now = time.monotonic()
            writer.progress(progress.epoch, progress.batch, steps_per_epoch, loss.item(),
                            interval_n * env.world_size / max(now - interval_t, 1e-9))
            interval_t, interval_n = now, 0
        if progress.batch >= steps_per_epoch:
            break
        if stop.requested(device):
            stopped = True
            break
    heartbeat.pause()
    seconds = time.monotonic() - started
    sums = torch.cat([local, torch.tensor([0.0], dtype=torch.float64, device=device)])
    sums = all_reduce_sum(sums).cpu()
    sums[3] = max(seconds, 0.0)  # wall time is the same for all ranks; not a sum
    return prior + sums if progress.partial else sums, stopped


def resume(cfg: RunConfig, classes, model, optimizer, scheduler, scaler) -> Progress:
    """--resume auto continues RUN_DIR/checkpoints/last.pt if it exists; PATH continues that file."""
    path = os.path.join(cfg.run_dir, "checkpoints", "last.pt") if cfg.resume == "auto" else cfg.resume
    if cfg.resume == "never" or not os.path.exists(path):
        return Progress()
    ckpt = checkpoint.load(path)
    checkpoint.check_fits(ckpt, path, cfg.arch, classes)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    checkpoint.restore_rng(ckpt["rng"])
    progress = Progress(epoch=ckpt["epoch"], batch=ckpt["batch"], step=ckpt["step"],
                        best_acc1=ckpt["best_acc1"], partial=ckpt.get("partial"), world_size=ckpt.get("world_size"))
    log.info("resumed from %s: epoch %d, step %d of it", path, progress.epoch, progress.batch)
    return progress


def save(cfg: RunConfig, env: DistEnv, model, optimizer, scheduler, scaler, progress: Progress, classes,
         best: bool) -> None:
    """Rank 0 writes last.pt (and best.pt); the others wait so nobody runs ahead of a half-saved state."""
    if env.is_main:
        state = {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": progress.epoch, "batch": progress.batch, "step": progress.step,
            "best_acc1": progress.best_acc1, "partial": progress.partial, "world_size": env.world_size,
            "arch": cfg.arch, "num_classes": len(classes), "classes": list(classes),
            "config": cfg.to_toml_dict(), "rng": checkpoint.rng_state(),
        }
        folder = os.path.join(cfg.run_dir, "checkpoints")
        checkpoint.save_atomic(state, os.path.join(folder, "last.pt"))
        if best:
            checkpoint.save_atomic(state, os.path.join(folder, "best.pt"))
    barrier()


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


def _summary(cfg, env, device, global_batch, lr, loaders, progress) -> str:
    where = f"{env.world_size} x {device.type}" + (f" ({torch.cuda.get_device_name(device)})"
                                                   if device.type == "cuda" else "")
    lines = [
        f"distrain: {cfg.arch} on {where}, strategy {cfg.strategy}, amp {cfg.amp}, "
        f"channels_last {'on' if cfg.channels_last else 'off'}",
        f"  global batch {global_batch} ({cfg.batch_size} per process), lr {lr:g} (= {cfg.lr:g} x {global_batch}/256)",
        f"  {loaders.num_train} train / {loaders.num_val} val images, {len(loaders.classes)} classes",
        f"  run dir {cfg.run_dir}   tensorboard: distrain tensorboard {os.path.dirname(cfg.run_dir) or '.'}",
    ]
    if progress.epoch or progress.batch:
        lines.append(f"  resuming at epoch {progress.epoch}, batch {progress.batch}")
    if progress.world_size and progress.world_size != env.world_size:
        before = cfg.batch_size * progress.world_size
        lines.append(f"  world size changed {progress.world_size} -> {env.world_size} since the checkpoint: global "
                     f"batch {before} -> {global_batch}; lr follows it (linear scaling) "
                     f"{scaled_lr(cfg, before):g} -> {lr:g}")
    return "\n".join(lines)
