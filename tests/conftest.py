"""Shared fixtures: small real ImageFolders on disk and a way to run the real `distrain` command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

sys.path.insert(0, str(Path(__file__).parent))
import warm_cli  # noqa: E402
from imagefolder import make_imagefolder  # noqa: E402

# Small enough for 2 CPU cores, big enough to learn: 8 classes (so that acc5 is not always 100% and differs
# from acc1), 96 train and 29 val images of 32 px (12 and 3 a class; class0 has 8 val images: 29 is prime).
# --workers 0: a rank's loader workers come from a fork server that imports torch and torchvision again
# (~4 s of CPU a rank), most of what a tiny run costs; the tests about loading and the user's paths
# (first hour, README, SLURM) keep workers, and add `--workers 1` after TINY (the last value wins).
# The model is torchvision's smallest classifier with BatchNorm and no dropout: a step costs a quarter of
# resnet18's on the CPU, and DDP all-reduces 0.35M parameters instead of 11.2M. The README's commands, the
# benchmarks, test_seams' user paths, the exact two-node SLURM job and the weight-file tests train resnet18;
# the rest proves "any torchvision classifier" on this one.
CLASSES = 8
TINY_ARCH = "shufflenet_v2_x0_5"
TINY = ["--arch", TINY_ARCH, "--image-size", "32", "--batch-size", "16", "--workers", "0", "--lr", "0.2",
        "--seed", "0", "--log-interval", "2"]
WITH_WORKERS = ["--workers", "1"]


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `name`, made by build(folder) once for the whole test run, whichever xdist worker asks
    first: the other waits on a file lock in the workers' common base temp, then reads what it made."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # .../pytest-N/, above popen-gw0/ and popen-gw1/
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed on the other worker
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "data", lambda folder: make_imagefolder(
        folder / "imagefolder", classes=CLASSES, train_per_class=12, val_per_class=3, val_extra=5)) / "imagefolder"


def _two_ranks(imagefolder: Path, folder: Path) -> None:
    proc = distrain("launch", "--gpus", "0", "--procs", "2", "--data", imagefolder, "--epochs", "2",
                    "--run-dir", folder / "two-ranks", *TINY, "--profile", "2:2")  # --profile alone: rank 0's
    assert_ok(proc)
    assert "world 2" in proc.stdout


@pytest.fixture(scope="session")
def two_rank_run(imagefolder, tmp_path_factory) -> Path:
    """One real run shared by several tests (read, never changed): torchrun, 2 gloo processes, 2 epochs."""
    return built_once(tmp_path_factory, "two-rank-run", lambda folder: _two_ranks(imagefolder, folder)) / "two-ranks"


def distrain(*args: str, cwd=None, timeout: float = 300, env: dict | None = None,
             fresh: bool = False) -> subprocess.CompletedProcess:
    """Run the `distrain` command for real, in a process of its own; output is captured and echoed on
    failure. The process is forked from a server that has imported what the command imports (warm_cli.py);
    fresh=True (or DISTRAIN_TEST_FRESH=1) starts a new interpreter instead, as a user's shell does."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    argv = [*map(str, args)]
    if fresh or os.environ.get("DISTRAIN_TEST_FRESH"):
        proc = subprocess.run([sys.executable, "-m", "launch", *argv], cwd=cwd, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    else:
        proc = warm_cli.run(argv, cwd, full_env, timeout)
    proc.all = proc.stdout + proc.stderr
    return proc


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str):
    """A real filesystem of `size` (tmpfs) at `mount`, for a disk that fills; unmounted after. Needs root:
    skipped without it, a failure in CI or as root."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(f"mount -t tmpfs failed: {done.stderr.strip()}")
        pytest.skip(f"needs root for a small tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def start_distrain(*args, stdout=None, stderr=None, pipe_stdout: bool = False, new_session: bool = False,
                   netns: str | None = None, cwd=None, env: dict | None = None):
    """`distrain ARGS` started and not waited for, as subprocess.Popen starts it (and with what it returns:
    pid, poll, wait, send_signal, kill, stdout for pipe_stdout). stdout, stderr: open files; by default
    stderr goes with stdout, and stdout to /dev/null; netns: run in that network namespace; cwd, env (over
    the tests' environment) as for distrain(). Forked from the warm server like distrain(), or a new
    interpreter with DISTRAIN_TEST_FRESH=1."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    argv = [*map(str, args)]
    if os.environ.get("DISTRAIN_TEST_FRESH"):
        return subprocess.Popen([*(["ip", "netns", "exec", netns] if netns else []), sys.executable, "-m", "launch",
                                 *argv], cwd=cwd, env=env, text=True,
                                stdout=subprocess.PIPE if pipe_stdout else stdout or subprocess.DEVNULL,
                                stderr=stderr or subprocess.STDOUT, start_new_session=new_session)
    return warm_cli.Process(argv, cwd, env, stdout, stderr, pipe_stdout, new_session, netns)


def rank_pids(config) -> dict[int, int]:
    """{RANK: pid} of the training processes of the run whose config.toml this is: the processes that hold
    its RUN_DIR/logs/rankR.log open. (Ranks are forked from their torchrun agent, distrib/agent.py, which may
    itself be forked from the tests' warm server: a command line says nothing of whose rank a process is.)"""
    logs = str(Path(config).parent / "logs")
    ranks = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:  # one fd at a time: a rank that loads its own images (--workers 0) closes files all the time
                folder, name = os.path.split(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if folder == logs and name.startswith("rank") and name.endswith(".log"):
                ranks[int(name[4:-4])] = int(pid)
    return ranks


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """Bad input as promised: exit `code`, no traceback, exactly one line on stderr; returns it."""
    assert proc.returncode == code, proc.all
    assert "Traceback" not in proc.all, proc.all
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.all
    return lines[0]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.all[-6000:]}"


# --- a trained model for predict/export tests (issue 11)
def _one_rank(imagefolder: Path, folder: Path) -> None:
    proc = distrain("train", "--device", "cpu", "--data", imagefolder, "--epochs", "2", "--run-dir",
                    folder / "one-rank", *TINY)
    assert_ok(proc)


@pytest.fixture(scope="session")
def trained_checkpoint(imagefolder, tmp_path_factory) -> Path:
    """One real single-process run (TINY_ARCH, 32 px, 2 epochs): the model that predict and export use."""
    run_dir = built_once(tmp_path_factory, "one-rank-run", lambda folder: _one_rank(imagefolder, folder)) / "one-rank"
    return run_dir / "checkpoints" / "last.pt"


# Under pytest-xdist (`-n 2`, the README's test command): tests that share one machine-wide resource run in
# one worker, one after another: the SLURM cluster's two nodes, and the test hosts' network namespaces.
# These two chains are the longest; they are collected first so that each worker starts with one of them.
# The modules below build a costly module fixture (trained runs) that their tests then read or extend in
# order: each runs whole in one worker, so that fixture is built once.
ONE_WORKER_MODULES = {"test_pictures", "test_first_hour", "test_export", "test_predict", "test_recipes",
                      "test_seams", "test_shards"}
CHAINS = ("slurm", "hosts")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups (into each test's id, "@slurm")
def pytest_collection_modifyitems(items):
    group = {}
    for item in items:
        if item.get_closest_marker("slurm") or item.name.startswith("test_cluster_"):
            group[item] = "slurm"
        elif item.module.__name__ == "test_network":
            group[item] = "hosts"
        elif item.module.__name__ in ONE_WORKER_MODULES:
            group[item] = item.module.__name__
        if item in group:
            item.add_marker(pytest.mark.xdist_group(group[item]))
    items.sort(key=lambda item: CHAINS.index(group[item]) if group.get(item) in CHAINS else len(CHAINS))
