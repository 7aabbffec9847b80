"""CPU data-parallel scaling: `distrain launch --gpus 0 --procs 1` against `--procs 2` on the same work.

    python benchmarks/cpu_scaling.py                          # resnet18, 64 px, synthetic, 20 steps
    python benchmarks/cpu_scaling.py --procs 2 --threads-per-proc 4 --repeats 3 --json   # weak scaling, 8+ cores
    python benchmarks/cpu_scaling.py --allreduce-mb          # gloo all-reduce of resnet18/resnet50 gradients

Weak scaling, as training runs it: the batch per process is fixed (--batch-size), so 2 processes train
a global batch twice as big; gloo all-reduces the gradients every step. Each run is one epoch of
--steps-per-epoch steps on synthetic images (no decoding: the model step and the all-reduce alone), and
its throughput is metrics.jsonl's images_per_sec (global training images/s of the epoch).

Two ways to give out threads (OMP_NUM_THREADS of each process):
- default, the cores are shared out: threads-total / procs each (threads-total defaults to all cores),
  so one process gets every core and two get half each. Same hardware for both: the ideal speedup is 1,
  and the figure says whether P single-threaded processes plus gloo beat one multi-threaded process.
- --threads-per-proc T: T threads for every process, as on a machine with a core set per process (needs
  procs x T cores). Efficiency = images/s(P) / (P x images/s(1)) is then weak-scaling efficiency, the
  figure of goal 10 in the performance anchors (>= 85 % for 2 processes on one host).
Runs are interleaved in ABBA order so that a neighbour's load on a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(procs: int, threads: int, args, work: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"p{procs}-"))
    argv = [sys.executable, "-m", "launch", "launch", "--gpus", "0", "--procs", str(procs), "--synthetic",
            "--arch", args.arch, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--epochs", "1", "--steps-per-epoch", str(args.steps),
            "--run-dir", str(run_dir), "--resume", "never", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"error: --procs {procs} exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["world_size"] == procs, row
    return {"images_per_sec": row["images_per_sec"], "epoch_seconds": row["epoch_seconds"], "wall_seconds": wall}


ALLREDUCE_WORKER = """
import statistics, sys, time, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.ones(int(float(sys.argv[1]) * 2**20) // 4)  # float32 gradients of that many MB
for _ in range(2):
    dist.all_reduce(t)
times = []
for _ in range(int(sys.argv[2])):
    dist.barrier()
    start = time.perf_counter()
    dist.all_reduce(t)
    times.append(time.perf_counter() - start)
if dist.get_rank() == 0:
    print("SECONDS", statistics.median(times))
dist.destroy_process_group()
"""


def allreduce_seconds(procs: int, megabytes: float, repeats: int = 8) -> float:
    """Median time of one gloo all-reduce of `megabytes` of float32 over `procs` local processes (torchrun)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py") as script:
        script.write(ALLREDUCE_WORKER)
        script.flush()
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
                script.name, str(megabytes), str(repeats)]
        proc = subprocess.run(argv, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("SECONDS")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"error: all-reduce benchmark failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return float(line.split()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32, help="per process")
    ap.add_argument("--steps", type=int, default=20, help="--steps-per-epoch of each run")
    ap.add_argument("--workers", type=int, default=0, help="loader workers per process (synthetic data is cheap)")
    ap.add_argument("--procs", type=int, default=2, help="the process count compared with 1")
    ap.add_argument("--threads-total", type=int, default=os.cpu_count() or 1,
                    help="intra-op threads shared out between the processes (default: all cores)")
    ap.add_argument("--threads-per-proc", type=int, help="the same thread count for every process, instead "
                    "of sharing --threads-total out (weak scaling; needs procs x this many cores)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved")
    ap.add_argument("--allreduce-mb", type=float, nargs="*", metavar="MB",
                    help="instead: time a gloo all-reduce of MB MiB of float32 across --procs processes (resnet18's "
                         "gradients are 44.6 MiB, resnet50's 97.5 MiB; default both)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.allreduce_mb is not None:
        sizes = args.allreduce_mb or [44.6, 97.5]
        seconds = {mb: allreduce_seconds(args.procs, mb) for mb in sizes}
        result = {"procs": args.procs, "backend": "gloo",
                  "allreduce": [{"megabytes": mb, "seconds": round(t, 4), "gb_per_sec": round(mb * 2**20 / 1e9 / t, 3)}
                                for mb, t in seconds.items()]}
        if args.json:
            print(json.dumps(result))
        else:
            for row in result["allreduce"]:
                print(f"gloo all-reduce of {row['megabytes']} MiB across {args.procs} local processes: "
                      f"{row['seconds'] * 1000:.0f} ms (median of 8), {row['gb_per_sec']:.2f} GB/s")
        return

    if args.procs < 2:
        sys.exit("error: --procs must be at least 2 (it is compared with 1)")
    if args.threads_per_proc:
        configs = {1: args.threads_per_proc, args.procs: args.threads_per_proc}
        if args.procs * args.threads_per_proc > (os.cpu_count() or 1):
            print(f"warning: {args.procs} x {args.threads_per_proc} threads on {os.cpu_count()} cores: the processes "
                  "share cores, so this is not weak scaling", file=sys.stderr)
    else:
        configs = {1: max(1, args.threads_total), args.procs: max(1, args.threads_total // args.procs)}
    runs: dict[int, list[dict]] = {p: [] for p in configs}
    with tempfile.TemporaryDirectory(prefix="distrain-cpu-scaling-") as work:
        for i in range(args.repeats):
            order = list(configs) if i % 2 == 0 else list(configs)[::-1]  # ABBA
            for procs in order:
                runs[procs].append(run(procs, configs[procs], args, Path(work)))
                if not args.json:
                    r = runs[procs][-1]
                    print(f"  --procs {procs} run {i + 1}: {r['images_per_sec']:.1f} img/s", file=sys.stderr,
                          flush=True)

    one, many = (statistics.median(r["images_per_sec"] for r in runs[p]) for p in configs)
    result = {"arch": args.arch, "image_size": args.image_size, "batch_size_per_process": args.batch_size,
              "steps": args.steps, "workers": args.workers, "cores": os.cpu_count(), "repeats": args.repeats,
              "procs_1_threads": configs[1], f"procs_{args.procs}_threads_each": configs[args.procs],
              "procs_1_images_per_sec": round(one, 2), f"procs_{args.procs}_images_per_sec": round(many, 2),
              "speedup": round(many / one, 3), "efficiency": round(many / (args.procs * one), 3),
              "runs": {f"procs_{p}": [round(r["images_per_sec"], 2) for r in rs] for p, rs in runs.items()}}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.arch} at {args.image_size} px, synthetic, batch {args.batch_size} per process, {args.steps} steps, "
          f"{os.cpu_count()} cores, median of {args.repeats} interleaved run(s)")
    print(f"  --procs 1 (OMP_NUM_THREADS={configs[1]}):              {one:8.1f} img/s")
    print(f"  --procs {args.procs} (OMP_NUM_THREADS={configs[args.procs]} each, gloo): {many:8.1f} img/s")
    print(f"  speedup {result['speedup']:.3f}x, scaling efficiency {result['efficiency']:.1%}"
          + ("" if args.threads_per_proc
             else f" (the same {args.threads_total} cores for both: the ideal speedup is 1)"))


if __name__ == "__main__":
    main()
