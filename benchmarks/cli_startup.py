"""How long the `distrain` command takes to answer when it trains nothing, and whether it imported torch.

    python benchmarks/cli_startup.py                 # 15 runs of each command, medians
    python benchmarks/cli_startup.py --runs 31 --json

Commands timed (wall clock of the whole process, as a user waits for it):
- `distrain --help` through the installed console script (next to this Python), if there is one;
- `python -m launch --help`;
- `distrain launch --dry-run --synthetic --gpus 0` (resolves the config, plans the topology, prints the
  torchrun command line).
Runs are interleaved (one of each in turn), so a neighbour's load hits all alike. The design says the
launcher never imports torch: that is checked in-process for both commands, and `-X importtime` gives the
top-level imports that cost the most, which is where to look when the median is over the target.
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
TARGET_HELP_S = 0.3
DRY_RUN = ["launch", "--dry-run", "--synthetic", "--gpus", "0"]

TORCH_CHECK = """
import json, sys
from launch.cli import app
try:
    app({argv!r}, prog_name="distrain")
except SystemExit as e:
    assert e.code in (0, None), e.code
print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')}})))
"""


def commands() -> dict[str, list[str]]:
    script = Path(sys.executable).parent / "distrain"
    cmds = {}
    if script.exists():
        cmds["distrain --help"] = [str(script), "--help"]
    cmds["python -m launch --help"] = [sys.executable, "-m", "launch", "--help"]
    cmds["distrain launch --dry-run"] = [sys.executable, "-m", "launch", *DRY_RUN]
    return cmds


def timed(argv: list[str], cwd: str, env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run. CPU time (user + sys of the process) moves much less than
    wall time when other processes compete for the cores: it estimates the wall time of an idle machine."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv)} exited {proc.returncode}; run it by hand to see why")
    return seconds, usage.ru_utime + usage.ru_stime


def torch_modules(argv: list[str], cwd: str, env: dict) -> list[str]:
    code = TORCH_CHECK.format(argv=argv)
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: import check failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def top_imports(cwd: str, env: dict, n: int = 8) -> list[tuple[str, float]]:
    """The costliest imports of `python -m launch --help`, cumulative ms, outermost modules only."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-m", "launch", "--help"], cwd=cwd, env=env,
                         capture_output=True, text=True).stderr
    rows = []
    for line in err.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 1:  # a module imported by __main__ itself (or by launch's first import)
            rows.append((name.strip(), int(parts[1]) / 1000))
    return sorted(rows, key=lambda r: -r[1])[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15, help="runs of each command")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    cwd = tempfile.mkdtemp(prefix="distrain-startup-")  # the dry run names runs/...; keep it off the repo
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cmds = commands()
    cmds["python -c pass"] = [sys.executable, "-c", "pass"]  # the floor: interpreter and site start-up
    for argv in cmds.values():  # one untimed run each: page cache, .pyc files
        timed(argv, cwd, env)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cmds}
    for _ in range(args.runs):
        for name, argv in cmds.items():
            runs[name].append(timed(argv, cwd, env))
    result: dict = {"runs": args.runs}
    for name, samples in runs.items():
        result[name] = round(statistics.median(w for w, _ in samples), 4)
        result[f"{name} (cpu)"] = round(statistics.median(c for _, c in samples), 4)
    help_name = next(iter(cmds))
    result["help_median_s"] = result[help_name]
    result["help_cpu_median_s"] = result[f"{help_name} (cpu)"]
    result["help_under_target"] = result[help_name] < TARGET_HELP_S
    result["torch_imported_by_help"] = torch_modules(["--help"], cwd, env)
    result["torch_imported_by_dry_run"] = torch_modules(DRY_RUN, cwd, env)
    result["top_imports_ms"] = {name: round(ms, 1) for name, ms in top_imports(cwd, env)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"medians over {args.runs} interleaved runs: wall clock, and CPU time (user + sys) of the process")
    for name in cmds:
        print(f"  {name:28s} {result[name]:.3f} s wall   {result[f'{name} (cpu)']:.3f} s CPU")
    verdict = "under" if result["help_under_target"] else "OVER"
    print(f"  {help_name} is {verdict} the {TARGET_HELP_S} s target (wall clock)")
    for key in ("torch_imported_by_help", "torch_imported_by_dry_run"):
        print(f"  {key.replace('_', ' ')}: {', '.join(result[key]) or 'no'}")
    print("  costliest imports of --help (cumulative ms): "
          + ", ".join(f"{name} {ms:.0f}" for name, ms in result["top_imports_ms"].items()))


if __name__ == "__main__":
    main()
