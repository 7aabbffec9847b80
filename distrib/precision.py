"""Numeric precision of a rank: AMP dtypes, and the "auto" defaults settled for the device (training,
eval and bench share it, so eval scores in the precision training validated in)."""

from __future__ import annotations

import dataclasses

import torch

from distrib.config import RunConfig

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def resolve_precision(cfg: RunConfig, device: torch.device) -> RunConfig:
    """Settle the "auto" defaults for this device: bf16 and channels_last on GPUs, plain fp32 on CPU
    (where bf16 autocast is slower without AMX, and channels_last gains nothing)."""
    cuda = device.type == "cuda"
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if cuda and torch.cuda.is_bf16_supported() else "off")
    channels_last = cuda if cfg.channels_last is None else cfg.channels_last
    return dataclasses.replace(cfg, amp=amp, channels_last=channels_last)
