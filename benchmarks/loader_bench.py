"""Training-loader throughput: distrain's loader against torchvision's reference pipeline, same files.

    python benchmarks/loader_bench.py                    # 1024 JPEGs of 500x375, 256 of 2048x1536, in a temp dir
    python benchmarks/loader_bench.py --dir /tmp/lb --count 512 --workers 4 --json
    python benchmarks/loader_bench.py --only "500x375 ta-wide+erase"   # the recipe's augmentation, one case

The reference is the classic ImageNet recipe: ImageFolder + Compose([RandomResizedCrop(224),
RandomHorizontalFlip(), ToTensor(), Normalize(...)]) in a DataLoader. Ours is
distrib.data.build_loaders plus to_device on the CPU (its float conversion and normalisation are
work the reference does in its workers, so they count). Both use the same batch size and worker
count, persistent workers, and one untimed warm-up pass (worker start-up, page cache). Timed passes
alternate between the two; the ratio printed is the median of the per-pass ratios, and the rates the
medians of the per-pass rates. CPU ms per image (the loader's workers plus the main process, from
/proc) is printed beside them: it is the work done, and moves little when neighbours take the cores.

The "ta-wide+erase" case adds torchvision's reference augmentation for the recipes (presets.py):
TrivialAugmentWide(interpolation=BILINEAR) after the flip and RandomErasing(0.1) after Normalize, against
distrain's --auto-augment ta-wide --random-erase 0.1 (distrib/recipe/augment.py, on uint8 tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
from distrib.data.loaders import build_loaders, to_device  # noqa: E402
from distrib.runtime.env import DistEnv  # noqa: E402

CASES = {"500x375": ((500, 375), False), "2048x1536": ((2048, 1536), False),  # name -> JPEG size, augmented
         "500x375 ta-wide+erase": ((500, 375), True)}
TARGETS = {"500x375": 1.5, "2048x1536": 2.0, "500x375 ta-wide+erase": 1.3}
COUNTS = {"500x375": 1024, "2048x1536": 256, "500x375 ta-wide+erase": 1024}


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


def reference_loader(root: Path, batch: int, workers: int, size: int, augmented: bool = False) -> DataLoader:
    policy = [transforms.TrivialAugmentWide(interpolation=transforms.InterpolationMode.BILINEAR)] if augmented else []
    tf = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), *policy, transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        *([transforms.RandomErasing(0.1)] if augmented else [])])
    ds = datasets.ImageFolder(str(root / "train"), tf)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)


def reference_runner(root: Path, args, augmented: bool):
    loader = reference_loader(root, args.batch_size, args.workers, args.image_size, augmented)

    def run_pass(_epoch: int) -> int:
        return sum(len(labels) for _, labels in loader)

    return run_pass


def distrain_runner(root: Path, args, augmented: bool):
    cfg = RunConfig(data=str(root), batch_size=args.batch_size, workers=args.workers, image_size=args.image_size,
                    **(dict(auto_augment="ta-wide", random_erase=0.1) if augmented else {}))
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


def child_pids() -> set[int]:
    """This process's descendants (the loaders' workers: distrain's come from a fork server, so they
    are grandchildren), from /proc; empty where there is no /proc."""
    parents = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            if entry.isdigit():
                parents[int(entry)] = int(_stat(int(entry))[1])
        except OSError:  # exited meanwhile
            pass
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pids: set[int]) -> float:
    """CPU time (user + sys) of this process and of `pids` so far: work done, whatever else runs."""
    ticks = sum(int(f[11]) + int(f[12]) for f in map(_stat, pids))
    return time.process_time() + ticks / os.sysconf("SC_CLK_TCK")


def measure(root: Path, args, augmented: bool = False) -> dict[str, dict[str, list[float]]]:
    """Both loaders, one untimed warm-up pass each (which starts their persistent workers), then timed
    passes taken in turns, so that a neighbour's load on a shared machine hits both alike.
    Per loader and pass: images/s, and CPU ms per image of its workers plus the main process."""
    runners, workers = {}, {}
    for name, make in (("reference", reference_runner), ("distrain", distrain_runner)):
        before = child_pids()
        runners[name] = make(root, args, augmented)
        runners[name](0)
        workers[name] = child_pids() - before
    out = {name: {"img_s": [], "cpu_ms": []} for name in runners}
    for epoch in range(1, args.passes + 1):
        for name, run_pass in runners.items():
            cpu, start = cpu_seconds(workers[name]), time.perf_counter()
            images = run_pass(epoch)
            out[name]["img_s"].append(images / (time.perf_counter() - start))
            out[name]["cpu_ms"].append((cpu_seconds(workers[name]) - cpu) / images * 1e3)
    return out


def summarise(m: dict, target: float) -> dict:
    """Medians over passes. The ratio is the median of the per-pass ratios (the two loaders ran back to
    back): a pass that a neighbour slowed moves a mean a lot and the median hardly."""
    ref, ours = m["reference"], m["distrain"]
    ratios = [b / a for a, b in zip(ref["img_s"], ours["img_s"])]
    cpu_ratios = [a / b for a, b in zip(ref["cpu_ms"], ours["cpu_ms"])]
    med = statistics.median
    return {"reference_img_s": round(med(ref["img_s"]), 1), "distrain_img_s": round(med(ours["img_s"]), 1),
            "ratio": round(med(ratios), 2), "pass_ratios": [round(r, 2) for r in ratios], "target": target,
            "reference_cpu_ms_per_image": round(med(ref["cpu_ms"]), 2),
            "distrain_cpu_ms_per_image": round(med(ours["cpu_ms"]), 2), "cpu_ratio": round(med(cpu_ratios), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where the JPEGs go (kept); default: a temp dir, removed")
    ap.add_argument("--count", type=int, help="training JPEGs per image size (default: 1024 of 500x375, "
                    "256 of 2048x1536: a pass of each reference loader takes a few seconds)")
    ap.add_argument("--passes", type=int, default=5, help="timed passes over the files (medians are reported)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--only", action="append", choices=list(CASES), help="run only this case (repeatable)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the main process shares the cores with the workers, in both loaders

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="loader-bench-")
    base = Path(args.dir or tmp.name)
    results = {}
    for name, (size, augmented) in CASES.items():
        if args.only and name not in args.only:
            continue
        root = make_jpegs(base / f"{size[0]}x{size[1]}", size, args.count or COUNTS[name])
        results[name] = summarise(measure(root, args, augmented), TARGETS[name])
    if tmp:
        tmp.cleanup()

    meta = {"workers": args.workers, "batch_size": args.batch_size, "image_size": args.image_size,
            "count": args.count or COUNTS, "passes": args.passes, "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps({**meta, "results": results}))
        return
    print(f"{'JPEG size':<24}{'torchvision img/s':>19}{'distrain img/s':>16}{'ratio':>8}{'target':>8}"
          f"{'CPU ms/img':>16}{'CPU ratio':>11}")
    for name, r in results.items():
        cpu = f"{r['reference_cpu_ms_per_image']:.2f} / {r['distrain_cpu_ms_per_image']:.2f}"
        print(f"{name:<24}{r['reference_img_s']:>19.1f}{r['distrain_img_s']:>16.1f}"
              f"{r['ratio']:>7.2f}x{r['target']:>7.1f}x{cpu:>16}{r['cpu_ratio']:>10.2f}x")
        print(f"{'':<24}per-pass ratios: {', '.join(map(str, r['pass_ratios']))}")
    print(", ".join(f"{k}={v}" for k, v in meta.items()))


if __name__ == "__main__":
    main()
