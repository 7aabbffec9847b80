"""What step-level monitoring costs: the same short CPU training with figures every --log-interval steps (the
default, 20) against --log-interval 0 (no step figures, no live.json, no interval all_gather, no timing
hooks), A B B A ...

    python benchmarks/monitor_cost.py                         # 2 gloo processes, resnet18 32 px, synthetic
    python benchmarks/monitor_cost.py --interval 1 --pairs 3  # the worst case: a gather every step

Each run trains 2 epochs of --steps steps on synthetic images; its step time is the second epoch's
epoch_seconds / steps from metrics.jsonl (the first pays for warm-up). Runs go A B, B A, A B, ... so that a
neighbour's load on a shared machine, and its trend, falls on both sides alike; the figure is the median
over pairs of (step time with monitoring) / (step time without).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def step_time(interval: int, args, work: Path) -> tuple[float, float]:
    """(seconds per step of the second epoch, CPU seconds of the whole run: every process it started)"""
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"interval{interval}-"))
    argv = [sys.executable, "-m", "launch", "launch", "--gpus", "0", "--procs", str(args.procs), "--synthetic",
            "--arch", args.arch, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--workers", "1", "--epochs", "2", "--steps-per-epoch", str(args.steps), "--log-interval",
            str(interval), "--run-dir", str(run_dir), "--resume", "never", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cpu = children_cpu()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        sys.exit(f"error: --log-interval {interval} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    return row["epoch_seconds"] / args.steps, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=int, default=20, help="--log-interval of the monitored runs")
    parser.add_argument("--pairs", type=int, default=4, help="A B pairs (alternately B A)")
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    ratios, cpu_ratios = [], []
    with tempfile.TemporaryDirectory() as work:
        for pair in range(args.pairs):
            if pair % 2:
                off = step_time(0, args, Path(work))
                on = step_time(args.interval, args, Path(work))
            else:
                on = step_time(args.interval, args, Path(work))
                off = step_time(0, args, Path(work))
            ratios.append(on[0] / off[0])
            cpu_ratios.append(on[1] / off[1])
            print(f"pair {pair + 1}: step {on[0] * 1000:.1f} ms with --log-interval {args.interval}, "
                  f"{off[0] * 1000:.1f} ms with 0: ratio {on[0] / off[0]:.4f}; CPU of the whole run {on[1]:.1f} s vs "
                  f"{off[1]:.1f} s: ratio {on[1] / off[1]:.4f}", flush=True)
    print(f"step-time ratio (monitored / off), median of {args.pairs}: {statistics.median(ratios):.4f} "
          f"(min {min(ratios):.4f}, max {max(ratios):.4f}); CPU-time ratio of the whole runs: "
          f"{statistics.median(cpu_ratios):.4f} (min {min(cpu_ratios):.4f}, max {max(cpu_ratios):.4f})")


if __name__ == "__main__":
    main()
