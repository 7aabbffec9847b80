"""The README's first real run, timed: digits, resnet18 at 32 px, 2 CPU processes, 4 epochs.

    python benchmarks/digits_run.py                  # data in a temp dir, --repeats 1
    python benchmarks/digits_run.py --repeats 3 --json

Writes the digits ImageFolder (benchmarks/make_digits.py), then runs the README's "A first hour" command
(`distrain launch --gpus 0 --procs 2 ... --epochs 4 --batch-size 32 --lr 0.05 --schedule cosine`, plus
--seed so that every repeat trains the same model) and prints, from the run's metrics.jsonl, the best
val top-1, the wall time of the launch command, and the training img/s of each epoch. The same command is
run with --procs 1 beside it (the baseline): the ratio of the two training rates says what the second
process gives on this machine, which moves far less with a neighbour's load than the absolute rate.
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


def run(data: Path, procs: int, work: Path) -> dict:
    run_dir = Path(tempfile.mkdtemp(dir=work, prefix=f"p{procs}-"))
    argv = [sys.executable, "-m", "launch", "launch", "--procs", str(procs), "--data", str(data), *COMMAND,
            "--run-dir", str(run_dir), "--overwrite"]
    start = time.monotonic()
    proc = subprocess.run(argv, check=False, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"distrain launch failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"procs": procs, "wall_s": round(wall, 1), "best_acc1": max(r["val_acc1"] for r in rows),
            "img_per_s": round(statistics.median(r["images_per_sec"] for r in rows), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--data", type=Path, help="an existing digits folder (default: written to a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data or work / "digits"
        if not args.data:
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "make_digits.py"), str(data)], check=True,
                           capture_output=True)
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
