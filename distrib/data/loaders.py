"""Samplers, batches and loaders: what feeds one rank of the run.

    loaders = build_loaders(cfg, env, pin_memory=device.type == "cuda")
    for epoch in range(start_epoch, cfg.epochs):
        loaders.train_sampler.set_epoch(epoch, start_batch=k)   # k > 0 only when resuming mid-epoch
        for batch in loaders.train:                             # Batch(images uint8 NCHW, labels, skipped)
            images, labels = to_device(batch, device, cfg.channels_last)

Contracts that the rest of distrain relies on, whatever the data format (distrib/data/__init__.py):
- Training order is DistributedSampler's (shuffled by seed + epoch, disjoint shards, same count on every
  rank), truncated to whole batches and capped at --steps-per-epoch, so len(loaders.train) is exact.
- The augmentation of sample i depends only on (seed, epoch, rank, i), never on which worker ran it,
  so a run is reproducible whatever --workers is. The epoch reaches persistent workers through the
  sampler, which yields (index, epoch) pairs.
- Validation is sharded without padding: the union over ranks is exactly the val set, each image once.
- A file that cannot be decoded is dropped from its batch and named in Batch.skipped ("PATH: reason").
Datasets are in distrib/data/datasets.py, decoding and augmentation in distrib/data/images.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from distrib.config import ConfigError, RunConfig
from distrib.data import formats
from distrib.data.datasets import PREFETCH_FACTOR, Batch, Skipped
from distrib.data.samplers import TrainSampler, ValSampler
from distrib.data.workers import loader_options
from distrib.preprocess import IMAGENET_MEAN, IMAGENET_STD
from distrib.runtime.env import DistEnv

__all__ = ["Batch", "Loaders", "build_loaders", "to_device"]

# How the training batches are decoded (--decode): "module:function" (dataset, sampler, cfg, device, pin_memory)
# -> loader. Worker decode is this module's; device decode imports this package's datasets, never this module.
DECODERS = {"workers": "distrib.data.loaders:worker_loader",
            "device": "distrib.data.device_decode:device_loader"}


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    train_sampler: "TrainSampler"
    classes: list[str]
    num_train: int
    num_val: int


# ---------------------------------------------------------------- batches

class Collate:
    """Stack the good samples into a Batch; name the skipped ones. An all-bad batch is an empty Batch."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, samples: list) -> Batch:
        good = [s for s in samples if not isinstance(s, Skipped)]
        skipped = [s.reason for s in samples if isinstance(s, Skipped)]
        if good:
            # default_collate stacks straight into shared memory inside a worker (no extra copy on
            # the way to the main process).
            images = default_collate([image for image, _ in good])
        else:
            images = torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8)
        labels = torch.tensor([label for _, label in good], dtype=torch.int64)
        return Batch(images, labels, skipped)


def _host_float_batch(shape: torch.Size, channels_last: bool) -> torch.Tensor:
    """An uninitialised float32 batch in host memory, backed by transparent huge pages.

    A float batch is big (38 MB for 64 images of 224 px), and one from torch.empty is fresh memory
    from the OS every step: ~9,400 page faults, 12 ms of a 16 ms normalisation. numpy asks the kernel
    for huge pages (madvise) for arrays of 4 MB and more, which takes the whole to ~6 ms.
    """
    n, c, h, w = shape
    if channels_last:
        return torch.from_numpy(np.empty((n, h, w, c), dtype=np.float32)).permute(0, 3, 1, 2)
    return torch.from_numpy(np.empty((n, c, h, w), dtype=np.float32))


_NORM: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _norm_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a fresh host->device copy every step would stall the stream.
    if device not in _NORM:
        mean = torch.tensor([m * 255 for m in IMAGENET_MEAN], device=device).view(1, 3, 1, 1)
        inv_std = torch.tensor([1 / (s * 255) for s in IMAGENET_STD], device=device).view(1, 3, 1, 1)
        _NORM[device] = (mean, inv_std)
    return _NORM[device]


def to_device(batch: Batch, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy uint8 images (asynchronously from pinned memory), then float + ImageNet normalisation there."""
    images = batch.images.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    mean, inv_std = _norm_constants(device)
    if device.type == "cpu":
        out = _host_float_batch(images.shape, channels_last)
    else:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.empty(images.shape, dtype=torch.float32, device=device, memory_format=fmt)
    # Cast, normalise and change layout in one pass per piece. On the CPU one image at a time keeps
    # the second pass in cache (a whole float batch is ~40 MB); on a GPU, one launch per batch.
    step = 1 if device.type == "cpu" else max(len(images), 1)
    for i in range(0, len(images), step):
        torch.sub(images[i:i + step], mean, out=out[i:i + step]).mul_(inv_std)
    return out, labels


# ---------------------------------------------------------------- loaders

def _loader(dataset: Dataset, sampler: Sampler, cfg: RunConfig, pin_memory: bool, drop_last: bool) -> DataLoader:
    workers = cfg.workers
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last,
                      collate_fn=Collate(dataset.image_size), num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=workers > 0, prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
                      **loader_options(workers))


def worker_loader(dataset: Dataset, sampler: Sampler, cfg: RunConfig, device, pin_memory: bool) -> DataLoader:
    """--decode workers: the loader workers decode and augment; the training process gets uint8 batches."""
    return _loader(dataset, sampler, cfg, pin_memory, drop_last=True)


def build_loaders(cfg: RunConfig, env: DistEnv, pin_memory: bool, device: torch.device | None = None) -> Loaders:
    """This rank's train and val loaders; ConfigError if the data cannot fill one batch per rank.

    device: where --decode device decodes the training JPEGs (default: the rank's, from --device)."""
    seed = cfg.seed or 0
    train, val, classes = formats.open_datasets(cfg, env.rank)
    max_batches = cfg.steps_per_epoch * cfg.accum_steps if cfg.steps_per_epoch else None  # optimizer steps x K
    train_sampler = TrainSampler(len(train), env.rank, env.world_size, cfg.batch_size, seed, max_batches)
    if cfg.ra_reps > 1:  # --ra-reps: distrib/recipe/ra_sampler.py
        from distrib.data.samplers import RASampler
        train_sampler = RASampler(len(train), env.rank, env.world_size, cfg.batch_size, seed, max_batches, cfg.ra_reps)
    if train_sampler.batches_per_epoch == 0:
        raise ConfigError(
            f"{len(train)} training images cannot fill one batch of {cfg.batch_size} on each of "
            f"{env.world_size} processes; lower --batch-size or use fewer processes")
    module, _, name = DECODERS["workers" if cfg.synthetic else cfg.decode].partition(":")
    if cfg.decode == "device" and device is None:
        from distrib.runtime.process_group import pick_device
        device = pick_device(env, cfg.device)
    train_loader = getattr(importlib.import_module(module), name)(train, train_sampler, cfg, device, pin_memory)
    return Loaders(train=train_loader, val=val_loader(val, cfg, env, pin_memory), train_sampler=train_sampler,
                   classes=classes, num_train=len(train), num_val=len(val))


def val_loader(val: Dataset, cfg: RunConfig, env: DistEnv, pin_memory: bool) -> DataLoader:
    """This rank's unpadded slice of the validation set, in order."""
    return _loader(val, ValSampler(len(val), env.rank, env.world_size), cfg, pin_memory, drop_last=False)


def build_val_loader(cfg: RunConfig, env: DistEnv, pin_memory: bool) -> tuple[DataLoader, list[str]]:
    """The validation loader alone (eval): no training set is listed or sampled."""
    _, val, classes = formats.open_datasets(cfg, env.rank)
    return val_loader(val, cfg, env, pin_memory), classes
