"""The README's digits commands, run as written and timed: the first run (resnet18 at 32 px, 2 CPU
processes, 4 epochs), its 4-point sweep, and the 8-epoch recipe run.

    python benchmarks/digits_run.py                  # data in a temp dir, --repeats 1
    python benchmarks/digits_run.py --repeats 3 --json
    python benchmarks/digits_run.py --sweep          # "Sweeps": the 4-point line, points one after another
    python benchmarks/digits_run.py --recipe         # "Recipes": 8 epochs; then stopped in epoch 3 and resumed

Writes the digits ImageFolder (benchmarks/make_digits.py), then runs the README's "A first hour" command
(`distrain launch --gpus 0 --procs 2 ... --epochs 4 --batch-size 32 --lr 0.05 --schedule cosine`, plus
--seed so that every repeat trains the same model) and prints, from the run's metrics.jsonl, the best
val top-1, the wall time of the launch command, and the training img/s of each epoch. The same command is
run with --procs 1 beside it (the baseline): the ratio of the two training rates says what the second
process gives on this machine, which moves far less with a neighbour's load than the absolute rate.

--sweep runs the README's sweep line verbatim (--sweep-dir added) and prints each point's best val top-1
and the whole command's wall time. --recipe runs the README's 8-epoch recipe command and prints its val
acc1 and EMA val acc1 per epoch; then the same command in another run dir, stopped with `touch
RUN_DIR/STOP` a few steps into epoch 3 (0-based) and run again, and the largest relative difference
between the two runs' metrics.jsonl rows (every key but the timings).
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
COMMAND = ["--gpus", "0", "--arch", "resnet18", "--image-size", "32", "--epochs", "4", "--batch-size", "32",
           "--lr", "0.05", "--schedule", "cosine", "--seed", "0"]
SWEEP = ["sweep", "--gpus", "0", "--procs", "2", "--arch", "resnet18", "--image-size", "32", "--epochs", "4",
         "--batch-size", "32", "--lr", "0.05,0.1", "--seed", "0,1"]
RECIPE = ["launch", "--gpus", "0", "--procs", "2", "--arch", "resnet18", "--image-size", "32", "--epochs", "8",
          "--auto-augment", "ta-wide", "--random-erase", "0.1", "--mixup-alpha", "0.2", "--cutmix-alpha", "1.0",
          "--model-ema", "--ema-steps", "1", "--ema-decay", "0.997", "--label-smoothing", "0.1", "--accum-steps",
          "2", "--optimizer", "adamw", "--lr", "0.004", "--weight-decay", "0.05", "--schedule", "cosine",
          "--warmup-epochs", "1", "--seed", "0"]
TIMINGS = ("images_per_sec", "epoch_seconds", "data_wait_share")  # what a resume may change: the clock


def distrain(args: list[str], data: Path, *extra: str, wait=None) -> tuple[subprocess.CompletedProcess, float]:
    """`distrain ARGS --data DATA EXTRA` as a user's shell runs it; wait(proc) is called while it runs."""
    argv = [sys.executable, "-m", "launch", *args, "--data", str(data), *extra]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if wait:
        wait(proc)
    out = proc.communicate()[0]
    return subprocess.CompletedProcess(argv, proc.returncode, out), time.monotonic() - start


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run(data: Path, procs: int, work: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"p{procs}-"))
    proc, wall = distrain(["launch", "--procs", str(procs), *COMMAND], data, "--run-dir", str(run_dir), "--overwrite")
    if proc.returncode != 0:
        sys.exit(f"distrain launch failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    rows = metrics(run_dir)
    return {"procs": procs, "wall_s": round(wall, 1), "best_acc1": max(r["val_acc1"] for r in rows),
            "img_per_s": round(statistics.median(r["images_per_sec"] for r in rows), 1)}


def sweep(data: Path, work: Path) -> None:
    folder = work / "sweep"
    proc, wall = distrain(SWEEP, data, "--sweep-dir", str(folder))
    if proc.returncode != 0:
        sys.exit(f"distrain sweep failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    for point in sorted(p for p in folder.iterdir() if (p / "metrics.jsonl").exists()):
        rows = metrics(point)
        print(f"{point.name}: best acc1 {max(r['val_acc1'] for r in rows):.2f}%, epochs {len(rows)}")
    print(f"sweep of 4 points, one after another: {wall:.0f} s for the whole command")


def recipe(data: Path, work: Path) -> None:
    straight = work / "recipe"
    proc, wall = distrain(RECIPE, data, "--run-dir", str(straight))
    if proc.returncode != 0:
        sys.exit(f"the recipe run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
    rows = metrics(straight)
    print("| epoch | " + " | ".join(str(r["epoch"]) for r in rows) + " |")
    print("| val acc1 (%) | " + " | ".join(f"{r['val_acc1']:.1f}" for r in rows) + " |")
    print("| EMA val acc1 (%) | " + " | ".join(f"{r['val_ema_acc1']:.1f}" for r in rows) + " |")
    seconds = [r["epoch_seconds"] for r in rows]
    print(f"{wall:.0f} s for the whole command ({min(seconds):.0f}-{max(seconds):.0f} s per epoch)")

    stopped = work / "recipe-stopped"

    def stop_in_epoch_3(proc: subprocess.Popen) -> None:
        while proc.poll() is None and len(metrics(stopped)) < 3:
            time.sleep(0.2)
        time.sleep(min(seconds) / 3)  # a few steps into epoch 3
        (stopped / "STOP").touch()

    first, _ = distrain(RECIPE, data, "--run-dir", str(stopped), wait=stop_in_epoch_3)
    second, _ = distrain(RECIPE, data, "--run-dir", str(stopped))
    resumed = next((line.strip() for line in second.stdout.splitlines() if "resuming at" in line), "not resumed")
    again = metrics(stopped)
    worst = max((abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for a, b in zip(again, rows, strict=True) for k in b
                 if k not in TIMINGS and isinstance(b[k], (int, float))), default=float("nan"))
    print(f"stopped (exit {first.returncode}) and run again (exit {second.returncode}): {resumed}; "
          f"{len(again)} epochs logged, largest relative difference from the straight run {worst:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", type=Path, help="an existing digits folder (default: written to a temp dir)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="the README's sweep line instead of the first run")
    parser.add_argument("--recipe", action="store_true",
                        help="the README's 8-epoch recipe run, then stopped and resumed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or work / "digits"
        if not args.data:
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_digits.py"), str(data)], check=True,
                           capture_output=True)
        if args.sweep or args.recipe:
            for wanted, part in ((args.sweep, sweep), (args.recipe, recipe)):
                if wanted:
                    part(data, work)
            return
        results = []
        for _ in range(args.repeats):
            results += [run(data, 2, work), run(data, 1, work)]
    two = [r for r in results if r["procs"] == 2]
    one = [r for r in results if r["procs"] == 1]
    summary = {"runs": results,
               "procs2_best_acc1": statistics.median(r["best_acc1"] for r in two),
               "procs2_wall_s": statistics.median(r["wall_s"] for r in two),
               "procs2_img_per_s": statistics.median(r["img_per_s"] for r in two),
               "procs2_over_procs1": round(statistics.median(a["img_per_s"] / b["img_per_s"] for a, b in zip(two, one)), 2)}
    if args.json:
        print(json.dumps(summary))
        return
    for r in results:
        print(f"--procs {r['procs']}: best acc1 {r['best_acc1']:.2f}%  wall {r['wall_s']} s  {r['img_per_s']} img/s")
    print(f"digits, 2 processes: best acc1 {summary['procs2_best_acc1']:.2f}% in {summary['procs2_wall_s']} s "
          f"({summary['procs2_img_per_s']} img/s); 2 processes / 1 process = {summary['procs2_over_procs1']}x")


if __name__ == "__main__":
    main()
