"""Validation: top-1, top-5 and loss over this rank's shard, reduced as sums and counts across ranks.

Counts are summed exactly (float64 holds integers exactly), so accuracy is the same for any world size.
"""

from __future__ import annotations

import logging
import sys
import time

import torch
import torch.nn as nn

from distrib.data import to_device
from distrib.process_group import all_reduce_sum
from distrib.writer import PROGRESS_SECONDS

log = logging.getLogger("distrain")




@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype, channels_last: bool,
             note_skipped=lambda paths: None, say=log.info) -> dict:
    model.eval()
    criterion = nn.CrossEntropyLoss(reduction="sum")
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, top1, top5, samples, skipped
    started = last_line = time.monotonic()
    for done, batch in enumerate(loader, 1):
        if time.monotonic() - last_line >= PROGRESS_SECONDS:  # slow validation still says where it is
            last_line = time.monotonic()
            eta = (last_line - started) / done * (len(loader) - done)
            say(f"validation: batch {done}/{len(loader)} of this process, eta {eta:.0f}s")
        note_skipped(batch.skipped)
        sums[4] += len(batch.skipped)
        if batch.labels.numel() == 0:
            continue
        images, labels = to_device(batch, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        sums[0] += criterion(logits.float(), labels).double()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5.eq(labels[:, None])
        sums[1] += hits[:, 0].sum()
        sums[2] += hits.any(dim=1).sum()
        sums[3] += labels.numel()
    loss, top1, top5, samples, skipped = all_reduce_sum(sums).tolist()
    n = max(samples, 1)
    return {"acc1": 100 * top1 / n, "acc5": 100 * top5 / n, "loss": loss / n,
            "samples": int(samples), "skipped": int(skipped)}


def main(checkpoint_path: str, cfg, as_json: bool, ema: bool = True) -> dict:
    """`distrain eval`: the accuracy of a checkpoint on DATA/val, on any number of processes; its EMA weights
    when it has them (--model-ema), unless ema=False (--no-ema)."""
    import json

    from distrib import checkpoint
    from distrib.data import build_val_loader
    from distrib.env import DistEnv
    from distrib.model import from_checkpoint
    from distrib.train import AMP_DTYPES, resolve_precision
    from distrib.process_group import pick_device, process_group

    env = DistEnv.from_environ()
    device = pick_device(env, cfg.device)
    ckpt = checkpoint.load(checkpoint_path)
    with process_group(env, device, cfg.dist_timeout):
        loader, classes = build_val_loader(cfg, env, pin_memory=device.type == "cuda")
        checkpoint.check_fits(ckpt, checkpoint_path, ckpt["arch"], classes, fix="or give its own dataset")
        model = from_checkpoint(ckpt, ema)
        say = (lambda m: print(m, file=sys.stderr, flush=True)) if env.is_main else (lambda m: None)
        cfg = resolve_precision(cfg, device)  # training's precision, settled as training settles it
        amp_dtype, channels_last = AMP_DTYPES[cfg.amp], cfg.channels_last
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        result = evaluate(model, loader, device, amp_dtype, channels_last, say=say)
    result = {k: result[k] for k in ("acc1", "acc5", "loss", "samples")}
    if env.is_main:
        print(json.dumps(result) if as_json else
              f"acc1 {result['acc1']:.2f}%  acc5 {result['acc5']:.2f}%  loss {result['loss']:.4f}  "
              f"samples {result['samples']}", flush=True)
    return result
