"""What leaving a process costs once it has imported torch and torchvision: Python's teardown against distrain's
quick exit (distrib/runtime/quick_exit.py), which every rank, tool and loader fork server now takes.

    python benchmarks/process_exit.py            # 7 interleaved runs of each, medians
    python benchmarks/process_exit.py --runs 15 --json

Each run is a fresh `python -c` that imports torch and torchvision (what a rank, a tool and a fork server all
import), then ends: as usual (interpreter teardown), through quick_exit.leave, or through a bare os._exit (the
floor). CPU seconds (user + system) come from the kernel's account of each child. The difference between
the first two is what the quick exit saves per process; the suite starts several hundred such processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPORTS = "import torch, torchvision"
VARIANTS = {
    "teardown": IMPORTS,
    "quick_exit": IMPORTS + "\nfrom distrib.runtime import quick_exit\nquick_exit.leave(0)",
    "os._exit": IMPORTS + "\nimport os\nos._exit(0)",
}


def cpu_of(code: str) -> float:
    """CPU seconds of one child process running `code`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    samples = {name: [] for name in VARIANTS}
    for _ in range(args.runs):  # interleaved: a neighbour's load hits all alike
        for name, code in VARIANTS.items():
            samples[name].append(cpu_of(code))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    saved = medians["teardown"] - medians["quick_exit"]
    result = {"runs": args.runs, "cpu_s": {k: round(v, 3) for k, v in medians.items()},
              "saved_per_process_s": round(saved, 3),
              "quick_exit_vs_teardown": round(medians["quick_exit"] / medians["teardown"], 3)}
    if args.json:
        print(json.dumps(result))
        return
    for name, value in medians.items():
        print(f"{name:11s} {value:.2f} CPU-s (median of {args.runs}; min {min(samples[name]):.2f}, "
              f"max {max(samples[name]):.2f})")
    print(f"the quick exit saves {saved:.2f} CPU-s a process: {result['quick_exit_vs_teardown']:.2f}x "
          f"the CPU of a process that tears down")


if __name__ == "__main__":
    main()
