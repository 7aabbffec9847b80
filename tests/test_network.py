"""Many hosts on a real network: separate network stacks (tests/netns.py), real torchrun and gloo between
them, a host's cable pulled or its processes killed mid-run, a rank frozen on another host.

Hosts are 10.77.0.N inside namespaces this module makes and removes; nothing else is ever a target.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, distrain, metrics, rank_pids
from netns import NetHosts, unavailable

VAL_IMAGES = 29
PORT = "29500"  # inside host A's own network stack: no clash with anything else on the machine
TIMEOUT = "20"  # --dist-timeout: seconds a collective waits for a lost host
LAST_CALL = "10"  # --rdzv-last-call: A and B start together; a world of one forms 10 s after a loss, not 30



@pytest.fixture
def hosts_available() -> None:
    """Skip, saying why, where namespaces cannot be made; in CI (DISTRAIN_REQUIRE_NETNS=1) fail instead."""
    why = unavailable()
    if why and os.environ.get("DISTRAIN_REQUIRE_NETNS"):
        pytest.fail(f"multi-host tests required here, but no test hosts: {why}")
    if why:
        pytest.skip(f"no test hosts: {why}")


needs_hosts = pytest.mark.usefixtures("hosts_available")


def launch_args(a, run_dir: Path, data, *extra) -> list:
    return ["launch", "--gpus", "0", "--procs", "1", "--rdzv-endpoint", f"{a.addr}:{PORT}", "--data", data,
            "--run-dir", run_dir, *TINY, *extra]


def wait_for(what, timeout: float, *procs: subprocess.Popen, logs: tuple[Path, ...] = ()) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        tail = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
        assert time.monotonic() < deadline, f"timed out waiting\n{tail}"
        assert all(p.poll() is None for p in procs), f"a launcher ended early\n{tail}"
        time.sleep(0.2)


def finish(proc: subprocess.Popen, log: Path, timeout: float = 240) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return log.read_text()


def elastic_pair(a, b, run_dir: Path, data, epochs: int, logs: tuple[Path, ...]):
    """A and B start an elastic run (--nodes 1:2, two restarts allowed); returns once epoch 0 is done and in
    last.pt (its metrics row comes first: a host lost between the two has epoch 0 trained again)."""
    args = launch_args(a, run_dir, data, "--nodes", "1:2", "--max-restarts", "2", "--epochs", str(epochs),
                       "--dist-timeout", TIMEOUT, "--rdzv-last-call", LAST_CALL)
    pa, pb = a.distrain(*args, log=logs[0]), b.distrain(*args, log=logs[1])
    wait_for(lambda: metrics(run_dir) and checkpointed_epochs(run_dir) >= 1, 180, pa, pb, logs=logs)
    return args, pa, pb


def checkpointed_epochs(run_dir: Path) -> int:
    """The epochs last.pt holds, from position.json (written after it)."""
    from distrib.paths import RunPaths
    from launch.run_dir import position

    return (position(RunPaths(str(run_dir))) or {}).get("epoch", 0)


def rank_on(host, run_dir: Path) -> tuple[int, int]:
    """(rank, pid) of the training process running on `host`."""
    pids = set(host.pids())
    return next((r, p) for r, p in rank_pids(run_dir / "config.toml").items() if p in pids)


# --- what the launcher decides, without hosts ---------------------------------------------------------------

def test_each_node_says_its_part_and_gets_the_interface():
    from distrib.config import RunConfig
    from distrib.paths import RunPaths
    from launch import topology, torchrun

    cfg = RunConfig(nodes="2", gpus=0, rdzv_endpoint="10.0.0.1:29400", synthetic=True, run_dir="/r")
    plan = topology.make_plan(cfg, 0)
    host = torchrun.plan_argv(plan, cfg, "py", torchrun.NodeRole(True, "10.0.0.1", "ib0"))
    other = torchrun.plan_argv(plan, cfg, "py", torchrun.NodeRole(False, "10.0.0.2"))
    assert host[host.index("--rdzv-conf") + 1] == "is_host=1" and host[host.index("--local-addr") + 1] == "10.0.0.1"
    assert other[other.index("--rdzv-conf") + 1] == "is_host=0" and "10.0.0.2" in other
    env = torchrun.node_env("cpu", RunPaths("/r"), {}, torchrun.NodeRole(False, "10.0.0.2", "eth1"))
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "eth1"
    mine = torchrun.node_env("cpu", RunPaths("/h"), {"GLOO_SOCKET_IFNAME": "bond0"}, torchrun.NodeRole(False, "10.0.0.2", "eth1"))
    assert "GLOO_SOCKET_IFNAME" not in mine and mine["NCCL_SOCKET_IFNAME"] == "eth1"  # a user's own setting wins


def test_a_rendezvous_name_on_loopback_is_refused_before_anything_starts(tmp_path):
    run_dir = tmp_path / "never"
    proc = distrain("launch", "--nodes", "2", "--gpus", "0", "--rdzv-endpoint", "localhost:29400", "--synthetic",
                    "--run-dir", run_dir)
    assert proc.returncode == 2, proc.all
    line = proc.stderr.strip().splitlines()[-1]
    assert "resolves to 127.0.0.1" in line and "no other node can reach it" in line and "--rdzv-endpoint" in line
    assert "Traceback" not in proc.all and not run_dir.exists()
    check = distrain("check", "--nodes", "2", "--gpus", "0", "--rdzv-endpoint", "localhost:29400", "--synthetic",
                     "--run-dir", run_dir)
    assert check.returncode == 1 and "loopback" in check.stdout and "FAIL" in check.stdout, check.all


@needs_hosts  # root: a UTS and mount namespace of its own
def test_check_reports_a_hostname_that_resolves_to_loopback(tmp_path):
    """`distrain check` on a node whose own name resolves to loopback (as many images' /etc/hosts have it):
    in a UTS and mount namespace, the hostname is loopy-node and /etc/hosts maps it to 127.0.1.1."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.1.1 loopy-node\n")
    command = (f"hostname loopy-node && mount --bind {hosts} /etc/hosts && exec {sys.executable} -m launch check "
               f"--nodes 2 --gpus 0 --rdzv-endpoint 10.9.9.9:29400 --synthetic --run-dir {tmp_path / 'never'}")
    proc = subprocess.run(["unshare", "--uts", "--mount", "sh", "-c", command], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "300"})
    row = next((line for line in proc.stdout.splitlines() if line.strip("│ ").startswith("hostname")), "")
    assert "warn" in row and "name loopy-node resolves to 127.0.1.1 (loopback)" in row, proc.stdout + proc.stderr
    assert "map loopy-node to this node's address in /etc/hosts" in row
    assert "Traceback" not in proc.stdout + proc.stderr and not (tmp_path / "never").exists()


# --- real hosts ------------------------------------------------------------------------------------------------

@needs_hosts
def test_two_hosts_form_one_world_over_the_interface_that_reaches(imagefolder, tmp_path):
    """Host B's first interface (eth0) reaches nobody; the launcher picks eth1, the one routing to A."""
    run_dir = tmp_path / "two-hosts"
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    with NetHosts(2, dead_end={1}) as (a, b):
        args = launch_args(a, run_dir, imagefolder, "--nodes", "2", "--epochs", "1")
        procs = [h.distrain(*args, log=log) for h, log in zip((a, b), logs)]
        out = [finish(p, log) for p, log in zip(procs, logs)]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in out)
    assert "this node hosts the rendezvous as 10.77.0.1" in out[0]
    assert "joins the rendezvous at 10.77.0.1 as 10.77.0.2 on eth1" in out[1] and "GLOO_SOCKET_IFNAME=eth1" in out[1]
    rows = metrics(run_dir)
    assert [(r["epoch"], r["world_size"], r["val_samples"]) for r in rows] == [(0, 2, VAL_IMAGES)]
    nodes = json.loads((run_dir / "launch.json").read_text())["nodes"]
    assert nodes["10.77.0.1"]["is_host"] is True and nodes["10.77.0.2"]["is_host"] is False  # one store host
    assert nodes["10.77.0.2"]["env"]["GLOO_SOCKET_IFNAME"] == "eth1"


@needs_hosts
def test_host_cut_off_mid_run_then_back(imagefolder, tmp_path):
    """B's cable is pulled after epoch 0: A names the unreachable host within --dist-timeout, torchrun re-forms
    a world of one that resumes from last.pt with the LR of its global batch; B comes back and joins."""
    run_dir = tmp_path / "cut"
    logs = (tmp_path / "a.log", tmp_path / "b.log", tmp_path / "b-again.log")
    with NetHosts(2) as (a, b):
        args, pa, pb = elastic_pair(a, b, run_dir, imagefolder, 200, logs)
        b.cut()
        rank0 = run_dir / "logs" / "rank0.log"
        wait_for(lambda: "world size changed 2 -> 1" in rank0.read_text(), 180, pa, logs=logs)
        b.kill_all()  # what B's operator does after the repair: stop what is left, plug in, launch again
        b.restore()
        pb = b.distrain(*args, log=logs[2])
        wait_for(lambda: [r["world_size"] for r in metrics(run_dir)][-1:] == [2] and
                 any(r["world_size"] == 1 for r in metrics(run_dir)), 180, pa, pb, logs=logs)
        (run_dir / "STOP").touch()  # the point is made; end the run at the next step
        out = finish(pa, logs[0], 120)
    rows = metrics(run_dir)
    epochs = [r["epoch"] for r in rows]
    assert epochs == list(range(len(rows))), epochs  # resumed from last.pt each time: no epoch twice
    sizes = [r["world_size"] for r in rows]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2, sizes
    assert all(r["val_samples"] == VAL_IMAGES for r in rows)
    lrs = {r["world_size"]: r["lr"] for r in rows}
    assert lrs[1] == pytest.approx(lrs[2] / 2)  # the LR follows the global batch: 16 vs 32 images
    assert "rank 1 (at step" in out and "on 10.77.0.2 is unreachable" in out, out[-4000:]
    assert "world size changed 2 -> 1 since the checkpoint: global batch 32 -> 16; lr follows it" in out
    assert "world size changed 1 -> 2" in out


@needs_hosts
def test_host_processes_killed_mid_run(imagefolder, tmp_path):
    """Every process of host B is killed during an epoch: A carries on as a world of one and finishes."""
    run_dir = tmp_path / "killed"
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    with NetHosts(2) as (a, b):
        _, pa, pb = elastic_pair(a, b, run_dir, imagefolder, 3, logs)
        b.kill_all()
        out = finish(pa, logs[0])
    assert pa.returncode == 0, out[-4000:]
    rows = metrics(run_dir)
    assert [(r["epoch"], r["world_size"]) for r in rows] == [(0, 2), (1, 1), (2, 1)], rows
    assert all(r["val_samples"] == VAL_IMAGES for r in rows)
    assert "world size changed 2 -> 1" in out and re.search(r"resuming at (the end of epoch 1|epoch 2, step)", out)


@needs_hosts
def test_frozen_rank_on_another_host_is_named_with_its_stack(imagefolder, tmp_path):
    """A rank on host B is stopped (SIGSTOP): A fails after --dist-timeout naming rank, host and stack file;
    once the rank runs again its own watchdog writes its stack there; `distrain status` points at it all."""
    run_dir = tmp_path / "frozen"
    logs = (tmp_path / "a.log", tmp_path / "b.log")
    with NetHosts(2) as (a, b):
        args = launch_args(a, run_dir, imagefolder, "--nodes", "2", "--epochs", "50", "--dist-timeout", TIMEOUT,
                           "--batch-size", "4")  # 12 steps an epoch: the stop lands mid-epoch, in a step
        pa, pb = a.distrain(*args, log=logs[0]), b.distrain(*args, log=logs[1])
        rank0 = run_dir / "logs" / "rank0.log"
        wait_for(lambda: rank0.exists() and "epoch 1 step 4/12" in rank0.read_text(), 180, pa, pb, logs=logs)
        rank, victim = rank_on(b, run_dir)
        os.kill(victim, signal.SIGSTOP)
        out = finish(pa, logs[0], 180)
        os.kill(victim, signal.SIGCONT)
        hang_dir = run_dir / "logs" / "hang"
        stack = hang_dir / f"rank{rank}-{b.addr}-attempt0.stack"
        wait_for(lambda: stack.exists() and "Timeout" in stack.read_text(), 60, logs=logs)
    assert pa.returncode != 0
    line = next(line for line in out.splitlines() if line.startswith("hang: "))
    assert f"rank {rank} (at step" in line and f"on {b.addr} is hung" in line and str(stack) in line, out[-4000:]
    assert "train_one_epoch" in stack.read_text()  # where the frozen rank was, from its own stacks
    peer = next(hang_dir.glob(f"rank0-{a.addr}-attempt0.stack")).read_text()
    assert "gave up waiting" in peer and "train_one_epoch" in peer
    assert (hang_dir / "flight-recorder-attempt0" / "rank0").stat().st_size > 0, "the waiting rank's trace"
    status = distrain("status", run_dir)
    assert "hang:" in status.stdout and str(stack) in status.stdout, status.all
