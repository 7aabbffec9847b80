"""One epoch of `distrain train` against pytorch/examples' imagenet/main.py: same data, model, batch, workers.

    python benchmarks/epoch_vs_examples.py --examples-main /tmp/examples/imagenet/main.py
    python benchmarks/epoch_vs_examples.py --examples-main PATH --data DIR --arch resnet50 --repeats 3 --json

main.py is not part of distrain: fetch it from github.com/pytorch/examples (imagenet/main.py) and keep it
outside this repository. Without --data, an ImageFolder of photo-like JPEGs is written to a temp dir
(10 classes x 40 train / 10 val, 500x375, quality 90: the size of a typical ImageNet file).

Both run as they would for a user, one epoch of training then validation, as subprocesses on the CPU,
in ABBA order per pair of repeats (examples, distrain, distrain, examples, ...), so that a neighbour's
load on a shared machine, or a drift in it, hits both alike. Measured for each:
- images/s over the epoch: the epoch's training images over its time, including the wait for the first
  batch. distrain's is metrics.jsonl's images_per_sec; examples' is its images over the sum of its
  printed per-batch times (`-p 1` prints every batch). This is the figure the comparison is about.
- images/s at the median step: the batch over the median time of a full step (the first step and
  examples' last, partial batch left out), pooled over the repeats. A neighbour that takes the cores for
  a while stalls a few steps and moves an epoch's mean a lot, the median hardly: on a shared machine
  this is the steadier ratio. distrain's step times come from RUN_DIR/logs/rank0.log, stamped to the ms.
- wall seconds and CPU seconds (user + sys, data workers included) of the whole process: imports,
  model, epoch, validation, checkpoint. CPU time is work done, whatever else runs on the machine.
Examples' main.py hard-codes 224 px training crops and a 256 -> 224 validation resize, so the comparison
is only made at --image-size 224 (distrain's default, and the same validation geometry).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

# "Epoch: [0][ 3/13]\tTime  1.234 ( 1.500)\tData  0.001 ( 0.300)\t..." (examples' ProgressMeter)
EXAMPLES_STEP = re.compile(r"^Epoch: \[\d+\]\[\s*(\d+)/(\d+)\]\tTime\s+([\d.]+) \(\s*[\d.]+\)\tData\s+([\d.]+)")
# "2026-01-01 12:00:00,123 INFO epoch 0 step 3/12 loss 2.3010 25.3 img/s eta 12s" (RUN_DIR/logs/rank0.log)
DISTRAIN_STEP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO epoch \d+ step \d+/\d+ loss")


def photo_like(w: int, h: int, rng: np.random.Generator, hue: np.ndarray) -> Image.Image:
    """Smooth shapes tinted by the class, plus grain: JPEG sizes like a photo's (pure noise is ~5x bigger)."""
    low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = 0.6 * np.asarray(low, dtype=np.float32) + 0.4 * hue + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_data(root: Path, classes: int, train_per_class: int, val_per_class: int, size=(500, 375)) -> Path:
    rng = np.random.default_rng(0)
    for label in range(classes):
        hue = rng.integers(0, 256, 3).astype(np.float32)
        for split, count in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / f"class{label:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                photo_like(*size, rng, hue).save(folder / f"{i:04d}.jpg", quality=90)
    return root


def count_images(split_dir: Path) -> int:
    return sum(1 for p in split_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def timed(argv: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys of the process and its data workers) and stdout of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"error: {argv[1]} {argv[2]} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def run_examples(args, data: Path, work: Path, env: dict, train_images: int) -> dict:
    """main.py writes checkpoint.pth.tar into its cwd: give it a scratch one."""
    cwd = Path(tempfile.mkdtemp(dir=work, prefix="examples-"))
    argv = [sys.executable, str(Path(args.examples_main).resolve()), "-a", args.arch, "-b", str(args.batch_size),
            "-j", str(args.workers), "--epochs", "1", "-p", "1", str(data)]
    wall, cpu, stdout = timed(argv, cwd, env)
    steps = [m for m in map(EXAMPLES_STEP.match, stdout.splitlines()) if m]
    if not steps:
        sys.exit(f"error: no per-batch lines found in main.py's output; is it pytorch/examples' "
                 f"imagenet/main.py?\n{stdout[-2000:]}")
    times = [float(m.group(3)) for m in steps]
    full = times[: train_images // args.batch_size]  # examples keeps a last, smaller batch: not a full step
    return {"images_per_sec": train_images / sum(times), "step_seconds": full[1:],
            "epoch_seconds": sum(times), "data_wait_seconds": sum(float(m.group(4)) for m in steps),
            "images": train_images, "wall_seconds": wall, "cpu_seconds": cpu}


def run_distrain(args, data: Path, work: Path, env: dict) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix="distrain-"))
    argv = [sys.executable, "-m", "launch", "train", "--data", str(data), "--arch", args.arch,
            "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--epochs", "1",
            "--image-size", str(args.image_size), "--device", "cpu", "--run-dir", str(run_dir),
            "--resume", "never", "--log-interval", "1"]
    wall, cpu, _ = timed(argv, REPO, env)
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    # rank 0's log stamps every progress line to the millisecond; a line is written as its step ends.
    log = (run_dir / "logs" / "rank0.log").read_text().splitlines()
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in map(DISTRAIN_STEP.match, log) if m]
    return {"images_per_sec": row["images_per_sec"],
            "step_seconds": [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])],
            "epoch_seconds": row["epoch_seconds"], "images": round(row["images_per_sec"] * row["epoch_seconds"]),
            "wall_seconds": wall, "cpu_seconds": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples-main", required=True, help="pytorch/examples' imagenet/main.py")
    ap.add_argument("--data", help="ImageFolder root with train/ and val/ (default: generated JPEGs)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved")
    ap.add_argument("--classes", type=int, default=10, help="generated data: classes")
    ap.add_argument("--train-per-class", type=int, default=40, help="generated data: training images per class")
    ap.add_argument("--val-per-class", type=int, default=10, help="generated data: validation images per class")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if not os.path.isfile(args.examples_main):
        sys.exit(f"error: --examples-main {args.examples_main}: no such file; save pytorch/examples' "
                 "imagenet/main.py outside this repository and point at it")
    if args.image_size != 224:
        sys.exit("error: examples' main.py always trains at 224 px; compare at --image-size 224")

    work = Path(tempfile.mkdtemp(prefix="distrain-epoch-bench-"))
    try:
        data = Path(args.data) if args.data else make_data(work / "data", args.classes, args.train_per_class,
                                                            args.val_per_class)
        train_images = count_images(data / "train")
        # Same environment for both; CUDA hidden so that both take their CPU path on any machine.
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        runs: dict[str, list[dict]] = {"examples": [], "distrain": []}
        runners = {"examples": lambda: run_examples(args, data, work, env, train_images),
                   "distrain": lambda: run_distrain(args, data, work, env)}
        for i in range(args.repeats):
            order = ("examples", "distrain") if i % 2 == 0 else ("distrain", "examples")  # ABBA
            for name in order:
                runs[name].append(runners[name]())
                if not args.json:
                    r = runs[name][-1]
                    print(f"  {name:9s} run {i + 1}: {r['images_per_sec']:7.2f} img/s training, "
                          f"wall {r['wall_seconds']:6.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def pooled(name: str) -> float:  # all repeats' images over all repeats' epoch seconds
        return sum(r["images"] for r in runs[name]) / sum(r["epoch_seconds"] for r in runs[name])

    result = {"arch": args.arch, "batch_size": args.batch_size, "workers": args.workers,
              "image_size": args.image_size, "repeats": args.repeats, "train_images": train_images,
              "data": args.data or f"generated: {args.classes} classes x {args.train_per_class} train / "
                                   f"{args.val_per_class} val JPEGs, 500x375"}
    for name in runs:
        steps = [t for r in runs[name] for t in r["step_seconds"]]
        result[f"{name}_images_per_sec"] = round(pooled(name), 3)
        result[f"{name}_median_step_images_per_sec"] = round(args.batch_size / statistics.median(steps), 3)
        result[f"{name}_wall_seconds"] = round(statistics.median(r["wall_seconds"] for r in runs[name]), 2)
        result[f"{name}_cpu_seconds"] = round(statistics.median(r["cpu_seconds"] for r in runs[name]), 1)
        result[f"{name}_runs_images_per_sec"] = [round(r["images_per_sec"], 3) for r in runs[name]]
    result["examples_data_wait_fraction"] = round(
        sum(r["data_wait_seconds"] for r in runs["examples"]) / sum(r["epoch_seconds"] for r in runs["examples"]), 3)
    result["ratio"] = round(result["distrain_images_per_sec"] / result["examples_images_per_sec"], 3)
    result["median_step_ratio"] = round(result["distrain_median_step_images_per_sec"]
                                        / result["examples_median_step_images_per_sec"], 3)
    result["wall_ratio"] = round(result["examples_wall_seconds"] / result["distrain_wall_seconds"], 3)
    result["cpu_ratio"] = round(result["examples_cpu_seconds"] / result["distrain_cpu_seconds"], 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.arch}, batch {args.batch_size}, {args.workers} workers, {args.image_size} px, "
          f"{train_images} training images, {args.repeats} interleaved run(s) of each, CPU")
    for name in runs:
        print(f"  {name:9s} {result[f'{name}_images_per_sec']:8.2f} img/s over the epoch, "
              f"{result[f'{name}_median_step_images_per_sec']:.2f} at the median step; "
              f"train + validate: wall {result[f'{name}_wall_seconds']:.1f} s, CPU {result[f'{name}_cpu_seconds']:.0f} s")
    print(f"  distrain's speed / examples' (above 1: distrain is faster): {result['ratio']:.3f} over the epoch, "
          f"{result['median_step_ratio']:.3f} at the median step, {result['wall_ratio']:.3f} in wall time, "
          f"{result['cpu_ratio']:.3f} in CPU time")


if __name__ == "__main__":
    main()
