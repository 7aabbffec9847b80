"""One rank of `distrain predict --checkpoint`: top-k classes for its slice of the images.

    python -m distrib predict CHECKPOINT TOPK RUN_DIR/config.toml

The launcher wrote the image paths (RUN_DIR/predict-inputs.json). Rank r of W takes the contiguous slice
[r*n//W, (r+1)*n//W) (data.ValSampler: no padding, no duplicates) and writes its rows in order to
RUN_DIR/predictions/rankR.jsonl; the launcher joins the files in rank order, i.e. input order.
Images go through exactly eval's path (images.load_val, data.to_device), so predict's top-1 agrees with
`distrain eval` image for image. An unreadable image is a row with an error, never the end of the run.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from distrib import checkpoint
from distrib.data.datasets import Batch
from distrib.data.images import load_val, skip_reason
from distrib.data.loaders import to_device
from distrib.data.samplers import ValSampler
from distrib.data.workers import loader_options
from distrib.files import atomic_file
from distrib.paths import RunPaths
from distrib.preprocess import Preprocessing
from distrib.runtime.env import DistEnv
from distrib.tools import predict_io


class Failed(NamedTuple):
    index: int
    reason: str


class ImageList(Dataset):
    """item i = (3 x crop x crop uint8 image, i), or Failed(i, reason) for a file that cannot be decoded."""

    def __init__(self, paths: list[str], pre: Preprocessing):
        self.paths, self.pre = paths, pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return load_val(self.paths[i], self.pre.crop_size, self.pre.resize_size), i
        except Exception as e:  # PIL raises many types for broken files; one bad file is one error row
            return Failed(i, skip_reason(self.paths[i], e))


def collate(items: list) -> tuple[Batch, list[Failed]]:
    good = [x for x in items if not isinstance(x, Failed)]
    images = default_collate([im for im, _ in good]) if good else None
    return Batch(images, torch.tensor([i for _, i in good], dtype=torch.int64), []), \
        [x for x in items if isinstance(x, Failed)]


@torch.no_grad()
def main(checkpoint_path: str, topk: int, cfg) -> None:
    from distrib.model import from_checkpoint
    from distrib.runtime.process_group import pick_device

    env = DistEnv.from_environ()
    device = pick_device(env, cfg.device)
    ckpt = checkpoint.load(checkpoint_path)
    classes = list(ckpt["classes"])
    model = from_checkpoint(ckpt).to(device).eval()

    paths = RunPaths(cfg.run_dir)
    with open(paths.predict_inputs) as fh:
        inputs = json.load(fh)
    dataset = ImageList(inputs, Preprocessing.from_config(cfg))
    sampler = ValSampler(len(dataset), env.rank, env.world_size)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.workers, pin_memory=device.type == "cuda", **loader_options(cfg.workers))
    bar = predict_io.ProgressBar(len(sampler), f"predict (rank 0 of {env.world_size})"
                                  if env.world_size > 1 else "predict") if env.is_main else None
    out = paths.predictions(env.rank)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with atomic_file(out) as fh:
        for batch, failed in loader:
            rows = {f.index: predict_io.row(inputs[f.index], error=f.reason) for f in failed}
            if batch.images is not None:
                images, _ = to_device(batch, device, False)
                logits = model(images).float()
                # ranked by logit, as eval's top-k: probabilities that underflow to 0 would tie
                top = logits.topk(min(topk, logits.shape[1]), dim=1)
                probs = logits.softmax(dim=1).gather(1, top.indices)
                for i, p, k in zip(batch.labels.tolist(), probs.tolist(), top.indices.tolist()):
                    rows[i] = predict_io.row(inputs[i], p, k, classes)
            for i in sorted(rows):
                fh.write(json.dumps(rows[i]) + "\n")
            if bar:
                bar.update(len(rows))
    if bar:
        bar.close()
