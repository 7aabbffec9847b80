"""Which images each rank sees, in which order: training (DistributedSampler's shard, whole batches, a
resumable position), validation (contiguous slices, no padding), and repeated augmentation (--ra-sampler).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler):
    """This rank's shard of DistributedSampler(shuffle=True, seed=seed, drop_last=True), as (index, epoch).

    Only whole batches are yielded (at most max_batches of them), and set_epoch(e, start_batch=k)
    skips the first k of them: the rest of epoch e exactly as an uninterrupted run would see it.
    """

    def __init__(self, dataset_len: int, rank: int, world_size: int, batch_size: int,
                 seed: int = 0, max_batches: int | None = None):
        self.dataset_len, self.rank, self.world_size = dataset_len, rank, world_size
        self.batch_size, self.seed = batch_size, seed
        self.per_rank = dataset_len // world_size  # DistributedSampler's count with drop_last=True
        full = self.per_rank // batch_size
        self.batches_per_epoch = full if max_batches is None else min(full, max_batches)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside 0..{self.batches_per_epoch}, "
                             "the batches in one epoch of this rank")
        self.epoch, self.start_batch = epoch, start_batch

    def order(self, epoch: int) -> list[int]:
        """This rank's full shard for `epoch`, before the whole-batch cut and the skip."""
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        indices = torch.randperm(self.dataset_len, generator=g).tolist()
        return indices[: self.per_rank * self.world_size][self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start, stop = self.start_batch * self.batch_size, self.batches_per_epoch * self.batch_size
        epoch = self.epoch
        return iter([(i, epoch) for i in self.order(epoch)[start:stop]])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class ValSampler(Sampler):
    """Rank r of W gets the contiguous slice [r*n//W, (r+1)*n//W): no padding, no duplicates, in order."""

    def __init__(self, dataset_len: int, rank: int, world_size: int):
        self.start = rank * dataset_len // world_size
        self.stop = (rank + 1) * dataset_len // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


# Repeated augmentation. Repeated augmentation (torchvision's RASampler, --ra-sampler --ra-reps N; Hoffer et al. 2020).
# 
# Each image of the epoch's shuffle appears N times in a row; the copies are dealt round-robin to the ranks,
# so they land on different ranks (with N <= world size) and are augmented differently. Every rank's epoch
# is as long as without repetition (DistributedSampler's count), so an epoch sees about 1/N of the images.
# 
# Differences from torchvision's, both on purpose: it keeps len(dataset) // world images per rank, where
# torchvision rounds down to a multiple of 256 first (which leaves a small dataset with nothing); and each
# copy of an image gets its own augmentation even when two copies land on one rank (the copy number is part
# of the sample's random key), where torchvision relies on worker RNG streams that a resume would lose.
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
