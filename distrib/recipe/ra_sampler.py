"""Repeated augmentation (torchvision's RASampler, --ra-sampler --ra-reps N; Hoffer et al. 2020).

Each image of the epoch's shuffle appears N times in a row; the copies are dealt round-robin to the ranks,
so they land on different ranks (with N <= world size) and are augmented differently. Every rank's epoch
is as long as without repetition (DistributedSampler's count), so an epoch sees about 1/N of the images.

Differences from torchvision's, both on purpose: it keeps len(dataset) // world images per rank, where
torchvision rounds down to a multiple of 256 first (which leaves a small dataset with nothing); and each
copy of an image gets its own augmentation even when two copies land on one rank (the copy number is part
of the sample's random key), where torchvision relies on worker RNG streams that a resume would lose.
"""

from __future__ import annotations

import math

import torch

from distrib.data import TrainSampler


class RASampler(TrainSampler):
    """TrainSampler (whole batches, set_epoch(epoch, start_batch), (index, key) pairs) over repeated indices."""

    def __init__(self, dataset_len: int, rank: int, world_size: int, batch_size: int, seed: int = 0,
                 max_batches: int | None = None, reps: int = 3):
        super().__init__(dataset_len, rank, world_size, batch_size, seed, max_batches)
        self.reps = reps

    def shard(self, epoch: int) -> list[tuple[int, int]]:
        """This rank's (index, copy) pairs for `epoch`: torchvision's RASampler order, DistributedSampler's length."""
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        repeated = [(i, c) for i in torch.randperm(self.dataset_len, generator=g).tolist() for c in range(self.reps)]
        total = math.ceil(self.dataset_len * self.reps / self.world_size) * self.world_size
        repeated += repeated[: total - len(repeated)]
        return repeated[self.rank:total:self.world_size][: self.per_rank]

    def order(self, epoch: int) -> list[int]:
        return [i for i, _ in self.shard(epoch)]

    def __iter__(self):
        start, stop = self.start_batch * self.batch_size, self.batches_per_epoch * self.batch_size
        epoch = self.epoch
        # Copy 0 keeps the plain epoch as its key; copy c > 0 draws from "EPOCHrC" (data.sample_rng's key).
        return iter([(i, epoch if c == 0 else f"{epoch}r{c}") for i, c in self.shard(epoch)[start:stop]])
