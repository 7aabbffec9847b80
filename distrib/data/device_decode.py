"""--decode device: DataLoader workers only read JPEG bytes; the training device decodes them, in batches.

    train = device_loader(dataset, sampler, cfg, device, pin_memory)   # what build_loaders does for --decode device
    for batch in train:                                               # the usual Batch; images already on `device`
        images, labels = to_device(batch, device, cfg.channels_last)

When to use it: on GPU nodes that are input-bound (`distrain bench` says "input"). ImageFolder + PIL
decodes ~184 img/s per core (reference/performance_anchors.md §3), so an 8-GPU node runs out of cores
long before the GPUs are busy; nvJPEG (torchvision.io.decode_jpeg(device="cuda"), one batched call)
moves the decode onto the GPU and the cores only read files and parse headers. On the CPU it is only
for testing: the decode then runs in the training process, one image at a time, instead of in parallel
workers, and on a real run that process is busy with the training step. Measured on a 2-core VM
(500x375 JPEGs of ~86 KB, RandomResizedCrop 224, batch 32, loader + to_device, steady state, best of 2;
the VM's speed swings up to 5x between runs, so read the ratios): with --workers 2, workers 460-500
img/s, device (= this CPU) 415-445 img/s; in one process, 4.5-4.9 vs 3.1 ms of CPU per image (both
use libjpeg-turbo). So on CPU it is no gain: the work is the same, only moved onto the one process that
cannot scale. nvJPEG on a GPU is the point, and it is not measured here (no GPU); `distrain bench` has no
--decode yet, but bench.measure_loader(RunConfig(..., decode="device"), cuda, steps) measures it.

What stays the same as the worker path (distrib/data/images.py): the crop box and the flip of sample i are
drawn from sample_rng(seed, epoch, rank, i) in the same order, from the header's size, so the crop
distribution is unchanged. Pixels differ slightly (full-size decode then antialiased resize, where the
workers may decode at 1/2..1/8 scale; nvJPEG's IDCT is not libjpeg's): 0.3-0.5 grey levels on average
on CPU for 160 px and 500x375 JPEGs, none where the workers decode at full size too.
Files the device cannot take (PNG and other formats, CMYK JPEGs, EXIF-rotated JPEGs) are decoded
by the worker exactly as on the worker path. Unreadable files are named in Batch.skipped.

Decoding happens as the batch is drawn from the loader, not in to_device: train.py and evaluate.py
count batch.skipped before calling to_device, so a file found corrupt later could not be reported.
Validation stays on the workers (val_geometry + centre crop; once per epoch, it is rarely the bottleneck).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.io import ImageReadMode, decode_jpeg

from distrib.config import RunConfig
from distrib.data.datasets import PREFETCH_FACTOR, Batch, ImageDataset, Skipped, sample_rng
from distrib.data.image_files import Box, exif_orientation, open_image, rrc_box, skip_reason
from distrib.data.images import load_train
from distrib.data.workers import loader_options
from distrib.recipe import augment


class Encoded(NamedTuple):
    """A JPEG as its bytes, with the augmentation already drawn for it."""
    data: torch.Tensor  # uint8, the file's bytes
    box: Box
    flip: bool
    label: int
    path: str
    aug: tuple | None = None  # recipe.augment.Params drawn for it, applied after the decode


class EncodedBatch(NamedTuple):
    data: torch.Tensor       # every JPEG's bytes end to end: one shared-memory block per batch, not one per file
    sizes: list[int]         # bytes of each JPEG in `data`
    boxes: list[Box]
    flips: list[bool]
    labels: list[int]
    paths: list[str]
    decoded: torch.Tensor    # K x 3 x S x S uint8: samples the workers decoded (not device-decodable)
    decoded_labels: list[int]
    skipped: list[str]       # "PATH: reason", as in Batch.skipped
    augs: list               # recipe.augment.Params (or None) of each device-decoded sample


def device_decodable(img) -> bool:
    # The decoder gives raw pixels: no EXIF rotation (CUDA ignores it), and nvJPEG has no CMYK.
    return img.format == "JPEG" and img.mode in ("RGB", "L") and exif_orientation(img) == 1


class EncodedDataset(Dataset):
    """An ImageDataset's training split (any format), item = Encoded, (pixels, label) for files the device
    cannot take, or Skipped."""

    def __init__(self, images: ImageDataset):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        f = self.images
        (path, data), label = f.read(index), f.label(index)  # data: the file's path, or its bytes (shards)
        try:
            with open_image(data) as src:  # header only: the size to draw the box from
                if device_decodable(src.img):
                    rng = sample_rng(f.seed, epoch, f.rank, index)
                    box = rrc_box(*src.img.size, rng)  # same draws, same order as images.load_train
                    flip = rng.random() < 0.5
                    aug = f.augment.draw(rng, f.image_size) if f.augment else None
                    return Encoded(torch.frombuffer(src.data, dtype=torch.uint8), box, flip, label, path, aug)
            # The worker path, unchanged (a fresh rng: the same draws again).
            return load_train(data, f.image_size, sample_rng(f.seed, epoch, f.rank, index), f.augment), label
        except Exception as e:  # as ImageDataset: one bad file must not end a run
            return Skipped(f"{path}: {skip_reason(data, e)}")


class CollateEncoded:
    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, samples: list) -> EncodedBatch:
        enc = [s for s in samples if isinstance(s, Encoded)]
        cpu = [s for s in samples if isinstance(s, tuple) and not isinstance(s, (Encoded, Skipped))]
        data = torch.cat([e.data for e in enc]) if enc else torch.empty(0, dtype=torch.uint8)
        decoded = (default_collate([img for img, _ in cpu]) if cpu else
                   torch.empty((0, 3, self.image_size, self.image_size), dtype=torch.uint8))
        return EncodedBatch(data, [len(e.data) for e in enc], [e.box for e in enc], [e.flip for e in enc],
                            [e.label for e in enc], [e.path for e in enc], decoded, [label for _, label in cpu],
                            [s.reason for s in samples if isinstance(s, Skipped)], [e.aug for e in enc])


# ---------------------------------------------------------------- on the device

def _decode_one(data: torch.Tensor, device: torch.device):
    """Pixels, or the exception if neither decoder can read the file."""
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as e:
        if device.type == "cpu":
            return e
    try:  # nvJPEG rejects a few JPEG variants that libjpeg-turbo reads
        return decode_jpeg(data, mode=ImageReadMode.RGB).to(device)
    except RuntimeError as e:
        return e


def decode_all(chunks: list[torch.Tensor], device: torch.device) -> list:
    """One batched decode (what nvJPEG is fast at); image by image only when a file in the batch is bad."""
    if not chunks:
        return []
    try:
        return decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # the batched call returns nothing if any image fails: find which
        return [_decode_one(c, device) for c in chunks]


def crop_resize(pixels: torch.Tensor, box: Box, flip: bool, size: int) -> torch.Tensor:
    """RandomResizedCrop's resize of a decoded 3 x H x W uint8 image: 3 x size x size uint8."""
    left, top, w, h = box
    x = pixels[None, :, top:top + h, left:left + w]
    if x.device.type != "cpu":  # CUDA's antialiased bilinear kernel has no uint8 version
        x = x.float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    x = x if x.dtype == torch.uint8 else x.round_().clamp_(0, 255).to(torch.uint8)
    return x.flip(2) if flip else x


def decode_batch(batch: EncodedBatch, device: torch.device, size: int) -> Batch:
    """The Batch the worker path would have made (device-decoded samples first), images on `device`."""
    chunks = list(torch.split(batch.data, batch.sizes)) if batch.sizes else []
    crops, labels, skipped = [], [], list(batch.skipped)
    for pixels, box, flip, label, path, aug in zip(decode_all(chunks, device), batch.boxes, batch.flips,
                                                   batch.labels, batch.paths, batch.augs):
        if isinstance(pixels, Exception):
            skipped.append(f"{path}: {skip_reason(path, pixels)}")
            continue
        crop = crop_resize(pixels, box, flip, size)
        crops.append(augment.apply(crop, aug) if aug else crop)
        labels.append(label)
    images = torch.cat([torch.stack(crops) if crops else torch.empty((0, 3, size, size), dtype=torch.uint8,
                                                                      device=device),
                        batch.decoded.to(device, non_blocking=True)])
    return Batch(images, torch.tensor(labels + batch.decoded_labels, dtype=torch.int64), skipped)


class DeviceDecodeLoader:
    """The training DataLoader of encoded batches, yielding decoded Batches; anything else is the DataLoader's."""

    def __init__(self, loader: DataLoader, device: torch.device, image_size: int):
        self.loader, self.device, self.image_size = loader, device, image_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        return _Decoding(iter(self.loader), self.device, self.image_size)

    def __getattr__(self, name):
        return getattr(self.loader, name)


class _Decoding:
    def __init__(self, it, device: torch.device, image_size: int):
        self.it, self.device, self.image_size = it, device, image_size

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return decode_batch(next(self.it), self.device, self.image_size)

    def __getattr__(self, name):  # e.g. bench's _shutdown_workers on the DataLoader's iterator
        return getattr(self.it, name)


def device_loader(images: ImageDataset, sampler, cfg: RunConfig, device: torch.device,
                  pin_memory: bool) -> DeviceDecodeLoader:
    """loaders._loader's settings, with byte-reading workers and the decode on `device` (loaders.DECODERS)."""
    workers = cfg.workers
    loader = DataLoader(EncodedDataset(images), batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        collate_fn=CollateEncoded(cfg.image_size), num_workers=workers, pin_memory=pin_memory,
                        persistent_workers=workers > 0, prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
                        **loader_options(workers))
    return DeviceDecodeLoader(loader, device, cfg.image_size)
