"""What a node's ranks cost to start: torchrun starting each rank as a new interpreter (`python -m
torch.distributed.run`) against distrain's agent forking them once it has imported torch (distrib/agent.py).

    python benchmarks/rank_start.py                 # 2 ranks, 3 interleaved runs of each, medians
    python benchmarks/rank_start.py --procs 4 --runs 5 --json
    python benchmarks/rank_start.py --workers 1    # each rank with a loader worker, so its loader fork server

Each run trains the same tiny job (resnet18, 32 px, one epoch of a small ImageFolder, --workers 0 unless given) on
the CPU through the same torchrun line (launch/torchrun.py), once with each first module. CPU seconds are the kernel's
account of the whole process tree (agent, ranks, loader fork servers), wall seconds the run's. What differs is
the import of torch, torchvision and the training code: once per node, or once per rank (and, with
--workers, once more per rank in its loader fork server, which a forked rank forks from itself instead).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from launch import torchrun  # noqa: E402

FIRST_MODULES = {"new interpreters": "torch.distributed.run", "forked from the agent": torchrun.AGENT_MODULE}
TINY = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--seed", "0"]


def prepared_run(work: Path, data: Path, procs: int, workers: int) -> Path:
    """A run dir with its config.toml: one `distrain launch` of the job (its config is then copied per run)."""
    run_dir = work / "template"
    subprocess.run([sys.executable, "-m", "launch", "launch", "--gpus", "0", "--procs", str(procs), "--data",
                    str(data), "--run-dir", str(run_dir), "--workers", str(workers), *TINY],
                   check=True, cwd=REPO, capture_output=True)
    return run_dir


def one_run(template: Path, work: Path, module: str, procs: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one training run through torchrun whose first module is `module`."""
    run_dir = work / f"run-{time.monotonic_ns()}"
    run_dir.mkdir()
    config = (template / "config.toml").read_text().replace(str(template), str(run_dir))
    (run_dir / "config.toml").write_text(config)
    argv = torchrun.torchrun_argv(sys.executable, procs, str(run_dir / "logs" / "torchrun"),
                                  ["train", str(run_dir / "config.toml")])
    argv[1:3] = ["-m", module]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    subprocess.run(argv, check=True, cwd=REPO, env=env, capture_output=True)
    while True:  # the loader fork servers outlive their ranks by a moment; reaped here, they are counted
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    wall, after = time.monotonic() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    shutil.rmtree(run_dir)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> None:
    import ctypes

    from imagefolder import make_imagefolder

    # orphans (a rank's loader fork server) become this process's children, so their CPU is counted too
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="loader workers per rank (default 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_imagefolder(work / "data", classes=8, train_per_class=12, val_per_class=3, val_extra=5)
        template = prepared_run(work, work / "data", args.procs, args.workers)
        samples = {name: [] for name in FIRST_MODULES}
        for _ in range(args.runs):  # interleaved: a neighbour's load hits both alike
            for name, module in FIRST_MODULES.items():
                samples[name].append(one_run(template, work, module, args.procs))
    cpu = {name: statistics.median(c for c, _ in s) for name, s in samples.items()}
    wall = {name: statistics.median(w for _, w in s) for name, s in samples.items()}
    old, new = FIRST_MODULES
    result = {"procs": args.procs, "workers": args.workers, "runs": args.runs,
              "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
              "wall_s": {k: round(v, 2) for k, v in wall.items()},
              "cpu_forked_vs_new": round(cpu[new] / cpu[old], 3), "wall_forked_vs_new": round(wall[new] / wall[old], 3),
              "cpu_saved_per_rank_s": round((cpu[old] - cpu[new]) / args.procs, 2)}
    if args.json:
        print(json.dumps(result))
        return
    for name in FIRST_MODULES:
        print(f"{name:22s} {cpu[name]:6.2f} CPU-s  {wall[name]:6.2f} s wall   (median of {args.runs}, "
              f"{args.procs} ranks, --workers {args.workers}, one tiny epoch)")
    print(f"forked / new: CPU x{result['cpu_forked_vs_new']}, wall x{result['wall_forked_vs_new']}; "
          f"{result['cpu_saved_per_rank_s']} CPU-s saved a rank")


if __name__ == "__main__":
    main()
