"""One epoch of `distrain train` against pytorch/examples' imagenet/main.py: same data, model, batch, workers.

    python benchmarks/epoch_vs_examples.py --examples-main /tmp/examples/imagenet/main.py
    python benchmarks/epoch_vs_examples.py --examples-main PATH --data DIR --arch resnet50 --repeats 3 --json

main.py is not part of distrain: fetch it from github.com/pytorch/examples (imagenet/main.py) and keep it
outside this repository. Without --data, an ImageFolder of photo-like JPEGs is written to a temp dir
(10 classes x 40 train / 10 val, 500x375, quality 90: the size of a typical ImageNet file).

Both run as they would for a user, one epoch of training then validation, as subprocesses on the CPU
(or, with --device cuda, on GPU 0, distrain in fp32 NCHW like examples unless --distrain-gpu-defaults),
in ABBA order per pair of repeats (examples, distrain, distrain, examples, ...), so that a neighbour's
load on a shared machine, or a drift in it, hits both alike. With --simultaneous each pair runs at the
same time instead, half the cores each: on a machine whose load comes and goes within minutes, this is
the fairest comparison (both see the same load; they also compete with each other, alike). Measured:
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Callable, NamedTuple

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


class Job(NamedTuple):
    argv: list[str]
    cwd: Path
    parse: Callable[[str, float, float], dict]  # (output, wall seconds, CPU seconds) -> measurements


def run_jobs(jobs: list[Job], env: dict) -> list[dict]:
    """Run the jobs at the same time (one job: alone) and wait for all of them. Each job's CPU time is
    user + sys of its process and of the data workers it reaped."""

    def one(job: Job) -> dict:
        with tempfile.TemporaryFile(mode="w+") as out:
            start = time.perf_counter()
            proc = subprocess.Popen(job.argv, cwd=job.cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            text = out.read()
        if proc.returncode != 0:
            sys.exit(f"error: {' '.join(job.argv[1:3])} exited {proc.returncode}:\n{text[-4000:]}")
        return job.parse(text, wall, usage.ru_utime + usage.ru_stime)

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


def examples_job(args, data: Path, work: Path, train_images: int) -> Job:
    cwd = Path(tempfile.mkdtemp(dir=work, prefix="examples-"))  # main.py writes checkpoint.pth.tar here
    argv = [sys.executable, str(Path(args.examples_main).resolve()), "-a", args.arch, "-b", str(args.batch_size),
            "-j", str(args.workers), "--epochs", "1", "-p", "1", str(data)]
    if args.device == "cuda":
        argv[2:2] = ["--gpu", "0"]  # one GPU, no DataParallel: what distrain runs with one process

    def parse(output: str, wall: float, cpu: float) -> dict:
        steps = [m for m in map(EXAMPLES_STEP.match, output.splitlines()) if m]
        if not steps:
            sys.exit(f"error: no per-batch lines found in main.py's output; is it pytorch/examples' "
                     f"imagenet/main.py?\n{output[-2000:]}")
        times = [float(m.group(3)) for m in steps]
        full = times[: train_images // args.batch_size]  # examples keeps a last, smaller batch: not a full step
        return {"images_per_sec": train_images / sum(times), "step_seconds": full[1:],
                "epoch_seconds": sum(times), "data_wait_seconds": sum(float(m.group(4)) for m in steps),
                "images": train_images, "wall_seconds": wall, "cpu_seconds": cpu}

    return Job(argv, cwd, parse)


def distrain_job(args, data: Path, work: Path) -> Job:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix="distrain-"))
    argv = [sys.executable, "-m", "launch", "train", "--data", str(data), "--arch", args.arch,
            "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--epochs", "1",
            "--image-size", str(args.image_size), "--device", args.device, "--run-dir", str(run_dir),
            "--resume", "never", "--log-interval", "1"]
    if args.device == "cuda" and not args.distrain_gpu_defaults:
        argv += ["--amp", "off", "--channels-last", "false"]  # examples' main.py trains in fp32, NCHW

    def parse(output: str, wall: float, cpu: float) -> dict:
        row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        # rank 0's log stamps every progress line to the millisecond; a line is written as its step ends.
        log = (run_dir / "logs" / "rank0.log").read_text().splitlines()
        stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in map(DISTRAIN_STEP.match, log) if m]
        return {"images_per_sec": row["images_per_sec"],
                "step_seconds": [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])],
                "epoch_seconds": row["epoch_seconds"], "images": round(row["images_per_sec"] * row["epoch_seconds"]),
                "wall_seconds": wall, "cpu_seconds": cpu}

    return Job(argv, REPO, parse)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples-main", required=True, help="pytorch/examples' imagenet/main.py")
    ap.add_argument("--data", help="ImageFolder root with train/ and val/ (default: generated JPEGs)")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: both on GPU 0 (examples with --gpu 0, distrain fp32 NCHW like it)")
    ap.add_argument("--simultaneous", action="store_true",
                    help="run each pair at the same time, half the cores each (OMP_NUM_THREADS), instead of one "
                         "after the other: on a machine others load too, both then see the same load")
    ap.add_argument("--distrain-gpu-defaults", action="store_true",
                    help="with --device cuda, let distrain use its GPU defaults (bf16 autocast, channels_last)")
    ap.add_argument("--classes", type=int, default=10, help="generated data: classes")
    ap.add_argument("--train-per-class", type=int, default=40, help="generated data: training images per class")
    ap.add_argument("--val-per-class", type=int, default=10, help="generated data: validation images per class")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if not os.path.isfile(args.examples_main):
        sys.exit(f"error: --examples-main {args.examples_main}: no such file; save pytorch/examples' "
                 "imagenet/main.py outside this repository and point at it")
    if args.simultaneous and args.device == "cuda":
        sys.exit("error: --simultaneous shares the CPU cores; on a GPU run the two one after the other")
    if args.image_size != 224:
        sys.exit("error: examples' main.py always trains at 224 px; compare at --image-size 224")

    work = Path(tempfile.mkdtemp(prefix="distrain-epoch-bench-"))
    try:
        data = Path(args.data) if args.data else make_data(work / "data", args.classes, args.train_per_class,
                                                            args.val_per_class)
        train_images = count_images(data / "train")
        # Same environment for both; on the CPU, CUDA is hidden so that both take their CPU path anywhere.
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        if args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        if args.simultaneous:  # half the cores each
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // 2))
        runs: dict[str, list[dict]] = {"examples": [], "distrain": []}
        for i in range(args.repeats):
            jobs = {"examples": examples_job(args, data, work, train_images),
                    "distrain": distrain_job(args, data, work)}
            if args.simultaneous:  # both at once: whatever else loads the machine, loads both
                batches = [("examples", "distrain")]
            else:  # ABBA
                batches = [("examples",), ("distrain",)] if i % 2 == 0 else [("distrain",), ("examples",)]
            for names in batches:
                for name, r in zip(names, run_jobs([jobs[n] for n in names], env)):
                    runs[name].append(r)
                    if not args.json:
                        print(f"  {name:9s} run {i + 1}: {r['images_per_sec']:7.2f} img/s training, "
                              f"wall {r['wall_seconds']:6.1f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def pooled(name: str) -> float:  # all repeats' images over all repeats' epoch seconds
        return sum(r["images"] for r in runs[name]) / sum(r["epoch_seconds"] for r in runs[name])

    result = {"device": args.device, "simultaneous": args.simultaneous, "threads": env.get("OMP_NUM_THREADS"),
              "arch": args.arch, "batch_size": args.batch_size, "workers": args.workers,
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
          f"{train_images} training images, {args.repeats} run(s) of each "
          f"{'side by side, ' + result['threads'] + ' thread(s) each' if args.simultaneous else 'interleaved'}, "
          f"{args.device}")
    for name in runs:
        print(f"  {name:9s} {result[f'{name}_images_per_sec']:8.2f} img/s over the epoch, "
              f"{result[f'{name}_median_step_images_per_sec']:.2f} at the median step; "
              f"train + validate: wall {result[f'{name}_wall_seconds']:.1f} s, "
              f"CPU {result[f'{name}_cpu_seconds']:.0f} s")
    print(f"  distrain's speed / examples' (above 1: distrain is faster): {result['ratio']:.3f} over the epoch, "
          f"{result['median_step_ratio']:.3f} at the median step, {result['wall_ratio']:.3f} in wall time, "
          f"{result['cpu_ratio']:.3f} in CPU time")


if __name__ == "__main__":
    main()
