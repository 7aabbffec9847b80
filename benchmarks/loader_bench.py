"""Training-loader throughput: distrain's loader against torchvision's reference pipeline, same files.

    python benchmarks/loader_bench.py                    # 256 JPEGs each of 500x375 and 2048x1536, in a temp dir
    python benchmarks/loader_bench.py --dir /tmp/lb --count 512 --workers 4 --json

The reference is the classic ImageNet recipe: ImageFolder + Compose([RandomResizedCrop(224),
RandomHorizontalFlip(), ToTensor(), Normalize(...)]) in a DataLoader. Ours is
distrib.data.build_loaders plus to_device on the CPU (its float conversion and normalisation are
work the reference does in its workers, so they count). Both use the same batch size and worker
count, persistent workers, and one untimed warm-up pass (worker start-up, page cache).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from distrib.config import RunConfig  # noqa: E402
from distrib.data import build_loaders, to_device  # noqa: E402
from distrib.env import DistEnv  # noqa: E402

SIZES = {"500x375": (500, 375), "2048x1536": (2048, 1536)}
TARGETS = {"500x375": 1.5, "2048x1536": 2.0}


def photo_like(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """Smooth random shapes plus grain: JPEG sizes like a photo's (pure noise would be 5x bigger)."""
    low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(low, dtype=np.int16) + rng.normal(0, 8, (h, w, 3)).astype(np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_jpegs(root: Path, size: tuple[int, int], count: int, seed: int = 0) -> Path:
    """root/{train,val}/{a,b}/*.jpg, quality 90; existing files are kept (re-runs are cheap)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("val", 2)):
        for i in range(n):
            path = root / split / "ab"[i % 2] / f"{i:05d}.jpg"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                photo_like(*size, rng).save(path, quality=90)
    return root


def reference_loader(root: Path, batch: int, workers: int, size: int) -> DataLoader:
    tf = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    ds = datasets.ImageFolder(str(root / "train"), tf)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def reference_runner(root: Path, args):
    loader = reference_loader(root, args.batch_size, args.workers, args.image_size)

    def run_pass(_epoch: int) -> int:
        return sum(len(labels) for _, labels in loader)

    return run_pass


def distrain_runner(root: Path, args):
    cfg = RunConfig(data=str(root), batch_size=args.batch_size, workers=args.workers, image_size=args.image_size)
    loaders = build_loaders(cfg, DistEnv(), pin_memory=False)
    cpu = torch.device("cpu")

    def run_pass(epoch: int) -> int:
        loaders.train_sampler.set_epoch(epoch)
        n = 0
        for batch in loaders.train:
            if batch.skipped:  # a fast loader that drops images measures nothing
                raise RuntimeError(f"distrain skipped images: {batch.skipped[:3]}")
            images, labels = to_device(batch, cpu, channels_last=False)
            n += len(labels)
        return n

    return run_pass


def images_per_second(root: Path, args) -> dict[str, float]:
    """Both loaders, one untimed warm-up pass each, then timed passes taken in turns, so that a
    neighbour's load on a shared machine hits both alike."""
    runners = {"reference": reference_runner(root, args), "distrain": distrain_runner(root, args)}
    for run_pass in runners.values():
        run_pass(0)
    seconds, images = dict.fromkeys(runners, 0.0), dict.fromkeys(runners, 0)
    for epoch in range(1, args.passes + 1):
        for name, run_pass in runners.items():
            start = time.perf_counter()
            images[name] += run_pass(epoch)
            seconds[name] += time.perf_counter() - start
    return {name: images[name] / seconds[name] for name in runners}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where the JPEGs go (kept); default: a temp dir, removed")
    ap.add_argument("--count", type=int, default=256, help="training JPEGs per image size")
    ap.add_argument("--passes", type=int, default=3, help="timed passes over the files")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the main process shares the cores with the workers, in both loaders

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="loader-bench-")
    base = Path(args.dir or tmp.name)
    results = {}
    for name, size in SIZES.items():
        root = make_jpegs(base / name, size, args.count)
        rates = images_per_second(root, args)
        ref, ours = rates["reference"], rates["distrain"]
        results[name] = {"reference_img_s": round(ref, 1), "distrain_img_s": round(ours, 1),
                         "ratio": round(ours / ref, 2), "target": TARGETS[name]}
    if tmp:
        tmp.cleanup()

    meta = {"workers": args.workers, "batch_size": args.batch_size, "image_size": args.image_size,
            "count": args.count, "passes": args.passes, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({**meta, "results": results}))
        return
    print(f"{'JPEG size':<12}{'torchvision img/s':>19}{'distrain img/s':>16}{'ratio':>8}{'target':>8}")
    for name, r in results.items():
        print(f"{name:<12}{r['reference_img_s']:>19.1f}{r['distrain_img_s']:>16.1f}"
              f"{r['ratio']:>7.2f}x{r['target']:>7.1f}x")
    print(", ".join(f"{k}={v}" for k, v in meta.items()))


if __name__ == "__main__":
    main()
