"""Real torchrun topologies on one machine: two "nodes" over a loopback c10d rendezvous, and an elastic
restart after a worker is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY, assert_ok, metrics, rank_pids, start_distrain

VAL_IMAGES = 29


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(*args, log: Path):
    return start_distrain(*args, stdout=log.open("w"))


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.CompletedProcess(proc.args, proc.returncode, log.read_text(), "")
    done.all = done.stdout
    return done


def test_two_nodes_on_loopback_form_one_world(imagefolder, tmp_path):
    run_dir = tmp_path / "two-nodes"
    endpoint = f"127.0.0.1:{free_port()}"
    args = ["launch", "--nodes", "2", "--gpus", "0", "--procs", "1", "--rdzv-endpoint", endpoint,
            "--data", imagefolder, "--epochs", "1", "--run-dir", run_dir, *TINY]
    nodes = [start(*args, log=tmp_path / f"node{i}.log") for i in range(2)]
    results = [finish(p, tmp_path / f"node{i}.log") for i, p in enumerate(nodes)]
    for r in results:
        assert_ok(r)
    assert any("world 2" in r.stdout for r in results)
    rows = metrics(run_dir)
    assert len(rows) == 1, rows  # one writer across both nodes: global rank 0
    assert rows[0]["world_size"] == 2 and rows[0]["val_samples"] == VAL_IMAGES


def test_elastic_restart_after_sigkill_resumes_and_finishes(imagefolder, tmp_path):
    run_dir = tmp_path / "elastic"
    log = tmp_path / "launch.log"
    proc = start("launch", "--gpus", "0", "--procs", "2", "--max-restarts", "1", "--data", imagefolder,
                 "--epochs", "3", "--run-dir", run_dir, *TINY, log=log)
    deadline = time.monotonic() + 240
    last = run_dir / "checkpoints" / "last.pt"
    while not (metrics(run_dir) and last.exists()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # wait until epoch 0 is finished and checkpointed
    pids = rank_pids(run_dir / "config.toml")
    assert 1 in pids, (pids, log.read_text()[-3000:])
    os.kill(pids[1], signal.SIGKILL)
    result = finish(proc, log)
    assert_ok(result)
    epochs = [r["epoch"] for r in metrics(run_dir)]
    assert epochs == [0, 1, 2], epochs  # the restarted group resumed from last.pt: no epoch twice
    rank0 = (run_dir / "logs" / "rank0.log").read_text()
    assert "resumed from" in rank0
