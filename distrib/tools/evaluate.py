"""`distrain eval` on a rank: a checkpoint's accuracy on a dataset, on any number of processes."""

from __future__ import annotations

import sys

import torch

from distrib.report import pictures
from distrib.report.confusion import Confusion
from distrib.validation import evaluate


def main(checkpoint_path: str, cfg, as_json: bool, ema: bool = True, report: str | None = None) -> dict:
    """`distrain eval`: the accuracy of a checkpoint on DATA/val, on any number of processes; its EMA weights
    when it has them (--model-ema), unless ema=False (--no-ema). report: a folder for the per-class report
    (distrib/report/pictures.py), exact for any number of processes."""
    import json

    from distrib import checkpoint
    from distrib.data.loaders import build_val_loader
    from distrib.model import from_checkpoint
    from distrib.precision import AMP_DTYPES, resolve_precision
    from distrib.runtime.env import DistEnv
    from distrib.runtime.process_group import pick_device, process_group

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
        confusion = Confusion(len(classes)) if report else None
        result = evaluate(model, loader, device, amp_dtype, channels_last, say=say, observe=confusion)
        confused = confusion.finish(device) if confusion is not None else None  # a collective: every rank
    result = {k: result[k] for k in ("acc1", "acc5", "loss", "samples", "skipped")}
    if env.is_main:
        print(json.dumps(result) if as_json else
              f"acc1 {result['acc1']:.2f}%  acc5 {result['acc5']:.2f}%  loss {result['loss']:.4f}  "
              f"samples {result['samples']}", flush=True)
        if confused is not None:
            written = pictures.write_folder(report, confused, classes)
            say(f"report: {len(written)} files in {report} (per_class.csv, confusion_matrix.png, ...)")
        if result["skipped"]:
            say(f"skipped {result['skipped']} unreadable image(s): not scored (the lines above name them)")
    return result
