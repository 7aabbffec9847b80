"""Does `distrain bench --loader-only` give the figure benchmarks/loader_bench.py gives, run after run?

    python benchmarks/bench_agreement.py                 # 1024 JPEGs of 500x375 in a temp dir, 3 rounds
    python benchmarks/bench_agreement.py --dir /tmp/agree --rounds 4 --json

Each round runs, one after the other on the same files, (a) loader_bench.py's distrain runner in a process
of its own (one warm-up pass, then whole passes; median pass rate) and (b) `distrain bench --loader-only
--json` (settled warm-up, then a window of seconds; median part rate). Printed: both figures per round,
bench / loader_bench per round, and each bench run / the previous one. The goals: within 10 % of each
other, and two bench runs in a row within 10 %. Measure on a quiet machine: a neighbour moves both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

RUNNER = """
import json, statistics, sys, time, torch
sys.path.insert(0, {repo!r}); sys.path.insert(0, {bench!r})
from types import SimpleNamespace
import loader_bench
torch.set_num_threads(1)
args = SimpleNamespace(batch_size={batch}, workers={workers}, image_size=224)
run_pass = loader_bench.distrain_runner(__import__("pathlib").Path({root!r}), args, False)
run_pass(0)
rates = []
for epoch in range(1, {passes} + 1):
    start = time.perf_counter(); n = run_pass(epoch); rates.append(n / (time.perf_counter() - start))
print(json.dumps(statistics.median(rates)))
"""


def loader_bench_figure(root: Path, args) -> float:
    code = RUNNER.format(repo=str(REPO), bench=str(REPO / "benchmarks"), root=str(root), batch=args.batch_size,
                         workers=args.workers, passes=args.passes)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return float(out.stdout.strip().splitlines()[-1])


def bench_figure(root: Path, args) -> float:
    out = subprocess.run([sys.executable, "-m", "launch", "bench", "--loader-only", "--data", str(root),
                          "--batch-size", str(args.batch_size), "--workers", str(args.workers), "--device", "cpu",
                          "--seconds", str(args.seconds), "--json"], capture_output=True, text=True, check=True,
                         cwd=REPO, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    return float(json.loads(out.stdout.strip().splitlines()[-1])["images_per_sec"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", help="where the JPEGs go (kept); default: a temp dir")
    ap.add_argument("--count", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=6, help="loader_bench passes per round")
    ap.add_argument("--seconds", type=float, default=10, help="distrain bench's window")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    from loader_bench import make_jpegs

    tmp = None if args.dir else tempfile.TemporaryDirectory(prefix="bench-agreement-")
    root = make_jpegs(Path(args.dir or tmp.name) / "500x375", (500, 375), args.count)
    rows = []
    for r in range(args.rounds):
        lb, b = loader_bench_figure(root, args), bench_figure(root, args)
        rows.append({"round": r + 1, "loader_bench": lb, "bench": b, "bench_over_loader_bench": b / lb,
                     "bench_over_previous": b / rows[-1]["bench"] if rows else None})
    if tmp:
        tmp.cleanup()
    agree = [row["bench_over_loader_bench"] for row in rows]
    again = [row["bench_over_previous"] for row in rows[1:]]
    summary = {"median_bench_over_loader_bench": statistics.median(agree),
               "worst_bench_over_loader_bench": max(agree, key=lambda x: abs(x - 1)),
               "worst_bench_over_previous": max(again, key=lambda x: abs(x - 1)) if again else None}
    if args.json:
        print(json.dumps({"rows": rows, **summary}))
        return
    print(f"{'round':>5}{'loader_bench img/s':>20}{'bench img/s':>13}{'bench/lb':>10}{'bench/prev':>12}")
    for row in rows:
        prev = f"{row['bench_over_previous']:.3f}" if row["bench_over_previous"] else "-"
        print(f"{row['round']:>5}{row['loader_bench']:>20.1f}{row['bench']:>13.1f}"
              f"{row['bench_over_loader_bench']:>10.3f}{prev:>12}")
    print(f"bench / loader_bench: median {summary['median_bench_over_loader_bench']:.3f}, worst "
          f"{summary['worst_bench_over_loader_bench']:.3f}; bench run to run: worst "
          f"{summary['worst_bench_over_previous'] or float('nan'):.3f} (goal: both within 10 %)")


if __name__ == "__main__":
    main()
