"""distrain's GPU path in one short run: each CUDA feature through the real `distrain` command, timed.

    python benchmarks/gpu_check.py --out gpu_check.json                 # one GPU: under 8 minutes on an H200
    python benchmarks/gpu_check.py --device cpu --out /tmp/check.json   # the same steps, tiny, on the CPU (CI)
    python benchmarks/gpu_check.py --only train,train_resume,eval       # again, some steps only

Steps, in order; each is a subprocess with its own time limit, and one failing does not stop the rest:

    env             versions, the GPU, and that the `distrain` CLI starts
    data            ImageNet-sized photo-like JPEGs (6,144 train / 512 val in 8 classes; tiny on the CPU)
    bench_eager     distrain bench --synthetic: resnet50, bf16 autocast + channels_last
    bench_compile   the same with --compile                                  (CUDA only)
    bench_fp16      --amp fp16: autocast with the GradScaler                 (CUDA only)
    bench_workers   distrain bench --data: the input pipeline (CPU workers) and the model, which one bounds
    bench_decode    the same with --decode device (nvJPEG)
    train           distrain train --device cuda: one epoch, validation, last.pt and best.pt
    train_resume    the same command with --epochs 2: resumes from last.pt and trains epoch 1
    launch          distrain launch --gpus 1: torchrun, NCCL, world size 1 (NCCL_DEBUG=INFO shows it ran)
    launch_dp       distrain launch --gpus 1 --strategy dp: one process, nn.DataParallel
    eval            distrain eval of train's best.pt: every val image, acc1 as training measured it

It prints one table and writes one JSON file: per step pass/fail, seconds and figures, with the date,
torch version and GPU. The time limits add up to under 8 minutes (TOTAL_BUDGET_S; a step that finishes
early leaves its unused time to the later ones), so a run fits in 8 minutes whatever happens. `--device cpu` runs the
same steps small (resnet18 at 32 px, a few steps) and marks the CUDA-only ones "skipped: needs CUDA":
tests/test_gpu_check.py runs it in the suite, so the script cannot rot between GPU runs.

Installing on the GPU machine (a checkout of this repository, from its root):

    pip install -e ".[dev]"
    python benchmarks/gpu_check.py --out gpu_check.json

The script itself needs no install of distrain (it runs `python -m launch` from this checkout); it needs
distrain's dependencies. On a machine with no package index whose Python already has torch,
torchvision, tensorboard, typer, numpy and pillow, bring the missing pure-Python ones as wheels
(tomli-w, and typer if `env` says the CLI does not start): on a machine with an index,

    python3 -m pip download --no-deps --only-binary=:all: -d .whl tomli-w

copy .whl next to the checkout, and on the GPU machine, from the checkout's root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json

(`env` stops the run at once, with the reason, when the CLI cannot start or CUDA is not visible.)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

# Sizes per device. On the GPU: ImageNet's model and crop; an epoch of the loader bench is several
# rounds of its workers (each epoch's end drains and refills the pipeline: with fewer batches than
# workers that bubble would be the figure). On the CPU: the same steps, as small as they go.
SIZES = {
    "cuda": dict(arch="resnet50", image_size=224, bench_batch=256, batch=128, steps=30, seconds=6.0,
                 classes=8, train=6144, val=512, jpeg=(500, 375), workers=max(1, min(CORES - 2, 16))),
    "cpu": dict(arch="resnet18", image_size=32, bench_batch=8, batch=8, steps=2, seconds=1.0,
                classes=4, train=48, val=16, jpeg=(64, 48), workers=1),
}
GOALS = {"bench_eager": 3975.0}  # img/s, docs/performance.md "GPU (H200)": 50 % of MLPerf's per-GPU rate
CPU_LIMIT_S = 180  # per step on the CPU: a loaded CI machine is slow, and nothing there is budgeted


@dataclass
class Step:
    name: str
    budget_s: float                 # its time limit on the GPU (unused time passes on to later steps)
    argv: Callable[["Check"], list[str]] | None  # distrain arguments, or None for an in-process step
    verify: Callable[["Check", dict], dict]      # (check, step record) -> figures; raises Failed
    cuda_only: bool = False
    env: dict = field(default_factory=dict)


class Failed(Exception):
    """A step ran but what it proves did not hold: the message says what."""


class Check:
    """One run of the steps: where its files go and what each step found."""

    def __init__(self, device: str, work: Path):
        self.device, self.work, self.size = device, work, SIZES[device]
        self.data, self.records = work / "data", {}
        self.cuda = device == "cuda"

    def run_dir(self, name: str) -> Path:
        return self.work / "runs" / name

    def common(self) -> list[str]:
        s = self.size
        return ["--arch", s["arch"], "--image-size", str(s["image_size"])]

    def precision(self) -> list[str]:
        return ["--amp", "bf16", "--channels-last"]  # training's defaults on a bf16 GPU, said explicitly

    def training(self, name: str, epochs: int) -> list[str]:
        s = self.size
        return [*self.common(), "--data", str(self.data), "--batch-size", str(s["batch"]), "--workers",
                str(s["workers"]), "--epochs", str(epochs), "--run-dir", str(self.run_dir(name)),
                "--log-interval", "10"]

    def gpus(self) -> list[str]:
        return ["--gpus", "1"] if self.cuda else ["--gpus", "0"]


# ---------------------------------------------------------------- steps

PROBE = """
import json, platform, shutil, subprocess, sys
out = {"python": platform.python_version()}
import torch, torchvision
out.update(torch=torch.__version__, torchvision=torchvision.__version__, cuda=torch.version.cuda,
           cuda_available=torch.cuda.is_available())
if torch.cuda.is_available():
    out.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
               bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
    try:
        out["nccl"] = str(torch.cuda.nccl.version())
    except Exception as e:
        out["nccl"] = f"unknown ({e})"
from importlib.metadata import version
for name in ("typer", "tomli-w", "tensorboard", "pillow", "numpy"):
    try:
        out[name] = version(name)
    except Exception:
        out[name] = "missing"
try:  # loader workers hand batches over in shared memory: a small /dev/shm fails them
    out["dev_shm_gb"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
except OSError:
    out["dev_shm_gb"] = None
cli = subprocess.run([sys.executable, "-m", "launch", "bench", "--help"], capture_output=True, text=True)
out["cli"] = "ok" if cli.returncode == 0 else (cli.stdout + cli.stderr)[-600:]
print(json.dumps(out))
"""


def verify_env(check: Check, rec: dict) -> dict:
    found = json.loads(rec["stdout"].strip().splitlines()[-1])
    if found["cli"] != "ok":
        raise Failed(f"`python -m launch bench --help` fails (a missing or too old package?): {found['cli']}")
    if check.cuda and not found["cuda_available"]:
        raise Failed(f"no CUDA GPU visible to torch {found['torch']}")
    return found


def bench_json(rec: dict) -> dict:
    try:
        return json.loads(rec["stdout"].strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise Failed("bench printed no JSON line") from None


def bench_args(check: Check, *extra: str) -> list[str]:
    """The model step alone, at the benchmark batch."""
    s = check.size
    return ["bench", *check.common(), "--batch-size", str(s["bench_batch"]), "--steps", str(s["steps"]),
            "--device", check.device, "--json", "--synthetic", *extra]


def loader_args(check: Check, *extra: str) -> list[str]:
    """Real files: the input pipeline and the model step, at the training batch, with training's workers."""
    s = check.size
    return ["bench", *check.common(), "--data", str(check.data), *check.precision(), "--batch-size", str(s["batch"]),
            "--steps", str(s["steps"]), "--workers", str(s["workers"]), "--seconds", str(s["seconds"]),
            "--device", check.device, "--json", *extra]


def verify_model(check: Check, rec: dict, amp: str, compiled: bool = False) -> dict:
    r = bench_json(rec)
    if (r["amp"], r["channels_last"], r["compile"]) != (amp, True, compiled):
        raise Failed(f"measured amp={r['amp']} channels_last={r['channels_last']} compile={r['compile']}, "
                     f"asked amp={amp} channels_last=True compile={compiled}")
    figures = {k: r[k] for k in ("images_per_sec", "step_time_ms", "peak_memory_mb", "warmup_s")}
    eager = check.records.get("bench_eager", {}).get("figures", {}).get("images_per_sec")
    if compiled and eager:
        figures["speedup_vs_eager"] = round(r["images_per_sec"] / eager, 3)
    return figures


def verify_loader(check: Check, rec: dict, decode: str) -> dict:
    r = bench_json(rec)
    if r["mode"] != "both" or r["decode"] != decode or r["skipped_images"]:
        raise Failed(f"mode {r['mode']}, decode {r['decode']}, {r['skipped_images']} images skipped")
    figures = {k: r[k] for k in ("images_per_sec", "loader_images_per_sec", "loader_rate_min", "loader_rate_max",
                                 "loader_settled", "model_images_per_sec", "bound", "workers")}
    eager = check.records.get("bench_eager", {}).get("figures", {}).get("images_per_sec")
    if eager:
        figures["real_vs_synthetic"] = round(r["images_per_sec"] / eager, 3)
    return figures


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise Failed(f"no {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def verify_run(check: Check, name: str, epochs: int, world: int = 1) -> dict:
    rows, run_dir = metrics(check.run_dir(name)), check.run_dir(name)
    if [r["epoch"] for r in rows] != list(range(epochs)):
        raise Failed(f"metrics.jsonl has epochs {[r['epoch'] for r in rows]}, expected 0..{epochs - 1}")
    last = rows[-1]
    if last["world_size"] != world or last["val_samples"] != check.size["val"]:
        raise Failed(f"world_size {last['world_size']}, val_samples {last['val_samples']} (of {check.size['val']})")
    for ckpt in ("last.pt", "best.pt"):
        if not (run_dir / "checkpoints" / ckpt).is_file():
            raise Failed(f"no checkpoints/{ckpt}")
    return {"epoch": last["epoch"], "images_per_sec": round(last["images_per_sec"], 1),
            "epoch_seconds": round(last["epoch_seconds"], 2), "val_acc1": round(last["val_acc1"], 2),
            "train_loss": round(last["train_loss"], 4)}


def verify_resume(check: Check, rec: dict) -> dict:
    figures = verify_run(check, "train", 2)
    if "resum" not in rec["stdout"] + rec["stderr"]:
        raise Failed("the second run did not say it resumed")
    return figures


def verify_launch(check: Check, rec: dict, mode: str) -> dict:
    name = "launch" if mode == "standalone" else "launch_dp"
    record = json.loads((check.run_dir(name) / "launch.json").read_text())
    if record.get("mode") != mode or record.get("world_size") != 1:
        raise Failed(f"launch.json says mode {record.get('mode')}, world {record.get('world_size')}")
    figures = verify_run(check, name, 1)
    if check.cuda and mode == "standalone":
        logs = "".join(p.read_text(errors="replace") for p in (check.run_dir(name) / "logs").rglob("*") if p.is_file())
        figures["nccl_seen"] = "NCCL INFO" in rec["stdout"] + rec["stderr"] + logs
        if not figures["nccl_seen"]:
            raise Failed("no NCCL INFO line from the rank: the process group did not use NCCL")
    return figures


def verify_eval(check: Check, rec: dict) -> dict:
    r = json.loads(rec["stdout"].strip().splitlines()[-1])
    rows = metrics(check.run_dir("train"))
    trained = max(rows, key=lambda row: row["val_acc1"])["val_acc1"]  # best.pt is the first best epoch
    diff = r["acc1"] - trained
    # exact, as the README promises: the same images through the same validation code and precision policy
    # (a difference of one image is 100/val points; float noise in the percentage is far below 1e-9)
    if r["samples"] != check.size["val"] or abs(diff) > 1e-9:
        raise Failed(f"eval scored {r['samples']} images, acc1 {r['acc1']:.4f} vs {trained:.4f} in training")
    return {"acc1": round(r["acc1"], 2), "training_acc1": round(trained, 2), "difference": round(diff, 3),
            "samples": r["samples"]}


STEPS = [
    Step("env", 40, lambda c: ["-c", PROBE], verify_env),
    Step("data", 25, None, lambda c, rec: make_data(c)),
    Step("bench_eager", 40, lambda c: bench_args(c, *c.precision()), lambda c, rec: verify_model(c, rec, "bf16")),
    Step("bench_compile", 110, lambda c: bench_args(c, *c.precision(), "--compile"),
         lambda c, rec: verify_model(c, rec, "bf16", compiled=True), cuda_only=True),
    Step("bench_fp16", 25, lambda c: bench_args(c, "--amp", "fp16", "--channels-last"),
         lambda c, rec: verify_model(c, rec, "fp16"), cuda_only=True),
    Step("bench_workers", 35, lambda c: loader_args(c), lambda c, rec: verify_loader(c, rec, "workers")),
    Step("bench_decode", 35, lambda c: loader_args(c, "--decode", "device"),
         lambda c, rec: verify_loader(c, rec, "device")),
    Step("train", 40, lambda c: ["train", "--device", c.device, *c.training("train", 1)],
         lambda c, rec: verify_run(c, "train", 1)),
    Step("train_resume", 30, lambda c: ["train", "--device", c.device, *c.training("train", 2)], verify_resume),
    Step("launch", 35, lambda c: ["launch", *c.gpus(), *c.training("launch", 1)],
         lambda c, rec: verify_launch(c, rec, "standalone"), env={"NCCL_DEBUG": "INFO"}),
    Step("launch_dp", 25, lambda c: ["launch", *c.gpus(), "--strategy", "dp", *c.training("launch_dp", 1)],
         lambda c, rec: verify_launch(c, rec, "dp")),
    Step("eval", 25, lambda c: ["eval", "--checkpoint", str(c.run_dir("train") / "checkpoints" / "best.pt"),
                                "--data", str(c.data), *c.gpus(), "--image-size", str(c.size["image_size"]),
                                "--batch-size", str(c.size["batch"]), "--workers", str(c.size["workers"]), "--json"],
         verify_eval),
]

TOTAL_BUDGET_S = sum(s.budget_s for s in STEPS)  # 465 s: the whole run on one GPU, whatever happens


# ---------------------------------------------------------------- data

def photo(args) -> None:
    """One JPEG: smooth random shapes tinted by its class, plus grain (sizes like a photo's, not noise's)."""
    import numpy as np
    from PIL import Image

    path, label, classes, (w, h), seed = args
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (12, 16, 3)).astype(np.float64)
    low[..., label % 3] = 128 + 127 * (label / max(classes - 1, 1))  # a channel set by the class: learnable
    img = Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC)
    pixels = np.asarray(img, dtype=np.int16) + rng.normal(0, 8, (h, w, 3)).astype(np.int16)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_data(check: Check) -> dict:
    """DATA/{train,val}/classK/*.jpg, made in parallel; kept across runs with the same --work."""
    s, jobs = check.size, []
    for split, count in (("train", s["train"]), ("val", s["val"])):
        for i in range(count):
            label = i % s["classes"]
            folder = check.data / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            w, h = s["jpeg"] if i % 4 else s["jpeg"][::-1]  # a quarter portrait, as in photo collections
            path = folder / f"{i:05d}.jpg"
            if not path.exists():
                jobs.append((path, label, s["classes"], (w, h), 2 * i + (split == "val")))
    with multiprocessing.get_context("fork").Pool(CORES) as pool:
        pool.map(photo, jobs, chunksize=32)
    size = sum(p.stat().st_size for p in check.data.rglob("*.jpg"))
    return {"train": s["train"], "val": s["val"], "classes": s["classes"], "jpeg": "x".join(map(str, s["jpeg"])),
            "mean_kb": round(size / (s["train"] + s["val"]) / 1024, 1), "made": len(jobs)}


# ---------------------------------------------------------------- running

def run_step(step: Step, check: Check, limit: float) -> dict:
    rec = {"step": step.name, "status": "failed", "seconds": 0.0, "figures": {}, "limit_s": round(limit)}
    started = time.monotonic()
    try:
        if step.argv is not None:
            rec.update(run_command(step, check, limit))
            if rec["timed_out"]:
                raise Failed(f"timed out after {limit:.0f} s")
            if rec["exit_code"] != 0:
                raise Failed(f"exit code {rec['exit_code']}")
        rec["figures"] = step.verify(check, rec)
        rec["status"] = "passed"
    except Exception as e:  # one failing step, whatever its reason, must not stop the rest
        rec["error"] = f"{type(e).__name__}: {e}" if not isinstance(e, Failed) else str(e)
        rec["output_tail"] = (rec.get("stdout", "") + rec.get("stderr", ""))[-3000:]
    rec["seconds"] = round(time.monotonic() - started, 1)
    rec.pop("stdout", None)
    rec.pop("stderr", None)
    return rec


def run_command(step: Step, check: Check, limit: float) -> dict:
    """The step's command in its own process group, ended with all it started (torchrun, ranks, loader
    workers) when it ends or reaches its limit."""
    args = step.argv(check)
    argv = [sys.executable, *(args if args[0] == "-c" else ["-m", "launch", *args])]  # -c: a Python probe
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    logs = check.work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / f"{step.name}.out", logs / f"{step.name}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(argv, cwd=check.work, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc)
    shown = ["python", "-c", "..."] if args[0] == "-c" else ["distrain", *args]
    return {"command": shlex.join(shown), "exit_code": proc.returncode, "timed_out": timed_out,
            "stdout": out_path.read_text(errors="replace"), "stderr": err_path.read_text(errors="replace")}


def _kill_group(proc: subprocess.Popen) -> None:
    """End the step and all it started: TERM, then KILL. Its process group, and every descendant found in
    /proc, since some run in sessions of their own (`distrain launch` starts torchrun that way)."""
    tree = _descendants({proc.pid})
    for sig in (signal.SIGTERM, signal.SIGKILL):
        tree |= _descendants(tree)  # what the processes started meanwhile (ranks, loader workers)
        for target in (-proc.pid, *tree):  # -pid: the whole group
            try:
                os.kill(target, sig)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        time.sleep(0.2 if sig == signal.SIGTERM else 0)


def _descendants(roots: set[int]) -> set[int]:
    """Every process below `roots` (not the roots), from /proc's parent links; empty where there is no /proc."""
    parents = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):  # exited meanwhile
                pass
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def run_all(check: Check, only: set[str] | None) -> list[dict]:
    records, bank = [], 0.0
    for step in STEPS:
        if only and step.name not in only and step.name not in ("env", "data"):
            continue
        if step.cuda_only and not check.cuda:
            rec = {"step": step.name, "status": "skipped: needs CUDA", "seconds": 0.0, "figures": {}}
        elif records and records[0]["status"] != "passed":
            rec = {"step": step.name, "status": "skipped: env failed", "seconds": 0.0, "figures": {}}
        else:
            limit = step.budget_s + bank if check.cuda else max(step.budget_s, CPU_LIMIT_S)
            print(f"gpu_check: {step.name} (limit {limit:.0f} s) ...", flush=True)
            rec = run_step(step, check, limit)
            bank = max(limit - rec["seconds"], 0.0)
            print(f"gpu_check: {step.name} {rec['status']} in {rec['seconds']:.1f} s"
                  + (f": {rec['error']}" if "error" in rec else ""), flush=True)
        check.records[step.name] = rec
        records.append(rec)
    return records


def table(records: list[dict], cuda: bool) -> str:
    lines = [f"{'step':<15}{'result':<22}{'seconds':>8}  figures"]
    for r in records:
        figures = ", ".join(f"{k}={v}" for k, v in r["figures"].items())
        goal = GOALS.get(r["step"]) if cuda else None
        if goal and "images_per_sec" in r["figures"]:
            figures += f" (goal >= {goal:.0f}: {'met' if r['figures']['images_per_sec'] >= goal else 'NOT met'})"
        if "error" in r:
            figures = r["error"]
        lines.append(f"{r['step']:<15}{r['status']:<22}{r['seconds']:>8.1f}  {figures}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=sorted(SIZES), default="cuda")
    ap.add_argument("--out", default="gpu_check.json", help="the JSON file written (default: gpu_check.json)")
    ap.add_argument("--work", help="folder for data, runs and logs (kept; data is reused); default: a temp "
                    "folder, removed")
    ap.add_argument("--only", help="comma-separated steps to run (env and data always run): "
                    + ",".join(s.name for s in STEPS))
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {s.name for s in STEPS}
    if unknown:
        ap.error(f"unknown step(s) {', '.join(sorted(unknown))}")
    work = Path(args.work or tempfile.mkdtemp(prefix="distrain-gpu-check-")).resolve()
    for name in ("train", "launch", "launch_dp"):  # fresh runs: a stale run dir would resume
        if not only or name in only:
            shutil.rmtree(work / "runs" / name, ignore_errors=True)
    check = Check(args.device, work)
    started = time.monotonic()
    records = run_all(check, only)
    env = records[0]["figures"]
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "device": args.device,
              "gpu": env.get("gpu"), "torch": env.get("torch"), "torchvision": env.get("torchvision"),
              "cuda": env.get("cuda"), "python": env.get("python"), "cpu_cores": CORES,
              "sizes": check.size, "total_seconds": round(time.monotonic() - started, 1),
              "passed": all(r["status"] != "failed" for r in records), "steps": records}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(table(records, check.cuda))
    print(f"{'all steps passed' if report['passed'] else 'SOME STEPS FAILED'} in {report['total_seconds']:.0f} s "
          f"on {report['gpu'] or 'CPU'} (torch {report['torch']}); JSON: {args.out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
