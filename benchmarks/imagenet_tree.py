"""Start-up, listings, memory and check time on an ImageNet-shaped tree (docs/performance.md, "ImageNet-sized trees").

    python benchmarks/imagenet_tree.py --root /tmp/imagenet-tree                  # 1,000 x (1,281 + 50) files
    python benchmarks/imagenet_tree.py --root /tmp/t --classes 10 --train 100 --val 5 --baseline /work/main

The tree is made of hard links to 64 small JPEGs (building 1.33 M links takes ~20 s, and no disk space),
so only the file count is ImageNet's. For each process count it measures, with `distrain launch --gpus 0`:
- start to first step: wall time from the command to the first "step 1/" line (page cache dropped first
  when the kernel allows it: "cold" in the output says whether it did);
- memory at the first step: PSS (/proc/PID/smaps_rollup) of each rank, its fork server and its workers;
- directory listings at start: getdents64 calls by the launcher and ranks on folders of the tree
  (`strace -f -y -e trace=getdents64`, a separate run, as strace slows everything);
and then `distrain check` on the whole tree (every header, the machine's cores), and the training loader's
images/s on shards against the folder (`distrain bench --loader-only`, a packed copy of --bench-classes).
--baseline DIR runs the same start-up measurements with another checkout's code (e.g. before the index).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SOURCES = 64  # ext4 allows 65,000 links to one file: 1.33 M links need more than 20 sources
RUN = ["--gpus", "0", "--arch", "resnet18", "--image-size", "32", "--batch-size", "32", "--workers", "2",
       "--epochs", "1", "--seed", "0", "--log-interval", "1"]


def build_tree(root: Path, classes: int, train: int, val: int) -> None:
    marker = root / f".tree-{classes}-{train}-{val}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    sources = root / ".sources"
    sources.mkdir(parents=True)
    for n in range(SOURCES):
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)
        low.save(sources / f"{n}.jpg", quality=85)
    start = time.time()
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                os.link(sources / f"{(c + i) % SOURCES}.jpg", folder / f"n{c:08d}_{i}.JPEG")
    marker.touch()
    print(f"tree: {classes} classes x ({train} + {val}) files in {time.time() - start:.0f} s", flush=True)


WARM = False  # --warm: leave the page cache as it is


def drop_caches() -> bool:
    if WARM:
        return False
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def env_for(code: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(code), "PYTHONUNBUFFERED": "1"}


def tree_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for p, pp in zip(map(int, out[::2]), map(int, out[1::2])):
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def pss_mb(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1)) / 1024


def memory(pid: int) -> dict:
    """PSS by role: ranks, fork servers, loader workers (children of a fork server)."""
    roles: dict[str, list[float]] = {"rank": [], "fork server": [], "worker": [], "launcher+agent": []}
    parents = {}
    for p in tree_of(pid):
        try:
            parents[p] = int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "forkserver" in cmd:
            parent_cmd = Path(f"/proc/{parents[p]}/cmdline").read_bytes()
            role = "worker" if b"forkserver" in parent_cmd else "fork server"
        elif "distrib train" in cmd:
            role = "rank"
        else:
            role = "launcher+agent"
        roles[role].append(round(pss_mb(p)))
    return roles


def first_step(data: Path, procs: int, code: Path, run_dir: Path, strace: Path | None = None) -> dict:
    """Launch, wait for the first training step, measure, stop the run."""
    shutil.rmtree(run_dir, ignore_errors=True)
    cold = drop_caches()
    cmd = [sys.executable, "-m", "launch", "launch", "--procs", str(procs), "--data", str(data),
           "--run-dir", str(run_dir), *RUN]
    if strace:
        cmd = ["strace", "-f", "-y", "-e", "trace=getdents64", "-o", str(strace), *cmd]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=code, env=env_for(code), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    result = {"procs": procs, "cold": cold}
    for line in proc.stdout:
        if re.search(r"step 1/", line):
            result["first_step_s"] = round(time.monotonic() - start, 1)
            if not strace:
                result["pss_mb"] = memory(proc.pid)
            break
    else:
        result["error"] = "no first step"
    for pid in tree_of(proc.pid):  # torchrun puts each rank in a session of its own: not one killpg
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    return result


def listings(trace: Path, root: Path) -> dict:
    """getdents64 calls on folders of the tree, and on anything, from an strace -y log."""
    lines = [ln for ln in trace.read_text().splitlines() if "getdents64(" in ln]
    return {"getdents64_on_data": sum(f"<{root}" in ln for ln in lines), "getdents64_total": len(lines)}


def timed(cmd: list[str], code: Path) -> tuple[float, str]:
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=code, env={**env_for(code), "COLUMNS": "200"}, capture_output=True, text=True)
    return round(time.monotonic() - start, 1), out.stdout + out.stderr


def loader_rates(root: Path, classes: int, work: Path) -> dict:
    """Training loader img/s, folder vs shards, on a copy of the first `classes` classes (real file sizes)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from loader_bench import photo_like

    small = work / "bench-folder"
    if not small.exists():
        rng = np.random.default_rng(1)
        for split, count in (("train", 100), ("val", 10)):
            for c in range(classes):
                (small / split / f"c{c}").mkdir(parents=True, exist_ok=True)
                for i in range(count):
                    photo_like(500, 375, rng).save(small / split / f"c{c}" / f"{i}.jpg", quality=90)
    packed = work / "bench-shards"
    subprocess.run([sys.executable, "-m", "launch", "pack", str(small), str(packed), "--shard-size", "64MB"],
                   cwd=REPO, env=env_for(REPO), check=True, capture_output=True)
    rates: dict[str, list] = {"folder": [], "shards": []}
    for name, data in [("folder", small), ("shards", packed), ("shards", packed), ("folder", small)] * 2:  # ABBA
        out = subprocess.run([sys.executable, "-m", "launch", "bench", "--loader-only", "--data", str(data),
                              "--workers", "2", "--batch-size", "32", "--steps", "30", "--json"], cwd=REPO,
                             env=env_for(REPO), capture_output=True, text=True)
        rates[name].append(json.loads(out.stdout.strip().splitlines()[-1]).get("images_per_sec")
                           if out.returncode == 0 else out.stderr.strip()[-200:])
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "imagenet-tree")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--train", type=int, default=1281)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--baseline", type=Path, help="another checkout to measure the same way (before/after)")
    ap.add_argument("--bench-classes", type=int, default=10)
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache before each start")
    ap.add_argument("--skip", nargs="*", default=[], choices=["startup", "strace", "check", "loader"])
    args = ap.parse_args()
    global WARM
    WARM = args.warm
    build_tree(args.root, args.classes, args.train, args.val)
    work = Path(tempfile.mkdtemp(prefix="imagenet-tree-runs-"))
    results: dict = {"files": args.classes * (args.train + args.val), "cores": len(os.sched_getaffinity(0))}
    codes = {"this": REPO, **({"baseline": args.baseline} if args.baseline else {})}
    if "startup" not in args.skip:
        index_dir = args.root / ".distrain-index"
        shutil.rmtree(index_dir, ignore_errors=True)
        for label, code in codes.items():
            for procs in args.procs:
                key = f"{label} {procs} procs"
                if label == "this" and procs == args.procs[0]:  # the first run builds the index
                    results[f"{key}, index built by the launcher"] = first_step(args.root, procs, code, work / "r")
                results[key] = first_step(args.root, procs, code, work / "r")
                print(key, results[key], flush=True)
    if "strace" not in args.skip and shutil.which("strace"):
        for label, code in codes.items():
            trace = work / f"trace-{label}"
            first_step(args.root, max(args.procs), code, work / "r", strace=trace)
            results[f"{label} listings, {max(args.procs)} procs"] = listings(trace, args.root)
            print(label, results[f"{label} listings, {max(args.procs)} procs"], flush=True)
    if "check" not in args.skip:
        drop_caches()
        seconds, out = timed([sys.executable, "-m", "launch", "check", "--data", str(args.root), "--gpus", "0",
                              "--run-dir", str(work / "r")], REPO)
        results["check_s"] = seconds
        results["check_images_line"] = next((ln for ln in out.splitlines() if "image headers" in ln), out[-300:])
        print("check", seconds, flush=True)
    if "loader" not in args.skip:
        results["loader_images_per_sec"] = loader_rates(args.root, args.bench_classes, work)
    print(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
