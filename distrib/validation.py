"""Validation: top-1, top-5 and loss over this rank's shard, reduced as sums and counts across ranks.

Counts are summed exactly (float64 holds integers exactly), so accuracy is the same for any world size.
Training validates with it every epoch; `distrain eval` scores a checkpoint with it.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn

from distrib.data.loaders import to_device
from distrib.metrics import PROGRESS_SECONDS
from distrib.runtime.process_group import all_reduce_sum

log = logging.getLogger("distrain")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, amp_dtype, channels_last: bool,
             note_skipped=lambda paths: None, say=log.info, observe=None) -> dict:
    """observe(logits, labels, images), when given, sees every scored batch (distrib/report/confusion.py)."""
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
        if observe is not None:
            observe(logits, labels, images)
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
