"""launch/torchrun.py, the one torchrun builder, and launch/node.py's pure part: every mode's command line
from the same function, with the same log flags, the port formula once, a user's own interface winning.

    python3 -m pytest tests/test_torchrun.py -q
"""

from __future__ import annotations

import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from distrib.config import RunConfig
from distrib.paths import RunPaths
from launch import network, node, topology, torchrun

REPO = Path(__file__).resolve().parent.parent
LOGS = ["--log-dir", "/r/logs/torchrun", "--redirects", "2"]
SLURM = {"SLURM_JOB_ID": "12345", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "PATH": "/bin"}


def _plan_argv(**kw):
    cfg = RunConfig(synthetic=True, run_dir="/r", gpus=0, procs=2, **kw)
    return torchrun.plan_argv(topology.make_plan(cfg, 0), cfg, "py", torchrun.NodeRole(False, "10.0.0.2", "eth1"))


def _has(argv: list[str], words: list[str]) -> bool:
    return any(argv[i:i + len(words)] == words for i in range(len(argv)))


def _slurm_node(role, environ=SLURM, device="cpu"):
    args = Namespace(procs=2, device=device, max_restarts=1, run_dir="/r")
    return node.node_command(args, environ, "n1", role, "py")


def test_every_mode_has_the_same_log_flags():
    standalone = _plan_argv()
    c10d = _plan_argv(nodes="2", rdzv_endpoint="10.0.0.1:29400")
    tool = torchrun.torchrun_argv("py", 3, "/r/logs/torchrun", ["eval", "ckpt.pt", "/r/config.toml"])
    slurm, _ = _slurm_node(torchrun.NodeRole(True, "10.0.0.1", "ib0"))
    for argv in (standalone, c10d, tool, slurm):
        assert argv[:3] == ["py", "-m", "distrib.agent"] and _has(argv, LOGS), argv
        assert "--tee" not in argv
    assert _has(standalone, ["--standalone", "--nnodes", "1"]) and "--rdzv-conf" not in standalone
    assert standalone[-4:] == ["-m", "distrib", "train", "/r/config.toml"]
    assert tool[-5:] == ["-m", "distrib", "eval", "ckpt.pt", "/r/config.toml"]


def test_c10d_node_says_its_part():
    argv = _plan_argv(nodes="2", rdzv_endpoint="10.0.0.1:29400", max_restarts=2)
    assert _has(argv, ["--rdzv-backend", "c10d", "--rdzv-endpoint", "10.0.0.1:29400"])
    assert _has(argv, ["--rdzv-conf", "is_host=0", "--local-addr", "10.0.0.2"])
    assert _has(argv, ["--nproc-per-node", "2", "--max-restarts", "2"])
    loopback = torchrun.torchrun_argv("py", 1, "/l", ["train"], rdzv=torchrun.Rendezvous("2", "n1:1", "j"),
                                      node=torchrun.NodeRole(is_host=True))
    assert _has(loopback, ["--rdzv-conf", "is_host=1"]) and "--local-addr" not in loopback


@pytest.mark.parametrize("job_id,port", [("12345", 32345), ("0", 20000), (40000, 20000), ("59999", 39999)])
def test_port_formula(job_id, port):
    assert torchrun.rdzv_port(job_id) == port
    assert torchrun.slurm_rendezvous("2", "n1", str(job_id)).endpoint == f"n1:{port}"


def test_slurm_node_joins_the_jobs_rendezvous_with_its_interface():
    argv, env = _slurm_node(torchrun.NodeRole(False, "10.0.0.2", "eth1"))
    assert _has(argv, ["--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint", "n1:32345", "--rdzv-id", "12345",
                       "--rdzv-conf", "is_host=0", "--local-addr", "10.0.0.2"])
    assert argv[-4:] == ["-m", "distrib", "train", "/r/config.toml"] and _has(argv, ["--max-restarts", "1"])
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "eth1"
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["PYTHONUNBUFFERED"] == "1" and env["OMP_NUM_THREADS"]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in env  # a SLURM job has a fixed node count


def test_slurm_node_carrying_the_head_address_hosts_the_store():
    """Whatever SLURM's node order says, the node whose interface carries the head's address hosts the store,
    names that address and gets that interface; on loopback (one machine) the node order decides."""
    outside = network.first_outside_address()
    if outside is None:
        pytest.skip("no non-loopback address on this machine")
    ifname, addr = outside
    net, role = network.slurm_node(addr, node_id=1)
    assert role == torchrun.NodeRole(is_host=True, local_addr=addr, ifname=ifname) and net.is_host
    assert network.slurm_node("127.0.0.1", node_id=1) == (None, torchrun.NodeRole(is_host=False))
    assert network.slurm_node("127.0.0.1", node_id=0) == (None, torchrun.NodeRole(is_host=True))


def test_a_users_own_interface_wins():
    role = torchrun.NodeRole(False, "10.0.0.2", "eth1")
    assert torchrun.node_env("cuda", RunPaths("/r"), {"NCCL_SOCKET_IFNAME": "ib0"}, role) == {
        "TORCH_FR_BUFFER_SIZE": "2000", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/r/logs/hang/nccl-trace-rank", "GLOO_SOCKET_IFNAME": "eth1"}
    _, env = _slurm_node(role, {**SLURM, "GLOO_SOCKET_IFNAME": "bond0", "OMP_NUM_THREADS": "7"}, device="cuda")
    assert (env["GLOO_SOCKET_IFNAME"], env["NCCL_SOCKET_IFNAME"], env["OMP_NUM_THREADS"]) == ("bond0", "eth1", "7")
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_salloc_and_sbatch_share_the_node_payload():
    cfg = RunConfig(synthetic=True, run_dir="/r", gpus=0, procs=2, max_restarts=3)
    plan = topology.make_plan(cfg, 0, allocated_nodes=2)
    payload = ["-m", "launch.node", "--procs", "2", "--device", "cpu", "--max-restarts", "3", "/r"]
    assert torchrun.plan_argv(plan, cfg, "py") == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                                                   "--kill-on-bad-exit=1", "py", *payload]
    assert torchrun.node_args(2, "cpu", 3, "/r") == payload
    assert node.parse(payload[2:]) == Namespace(endpoint=False, procs=2, device="cpu", max_restarts=3, run_dir="/r")


def test_node_entry_imports_no_torch():
    code = "import sys, launch.node, launch.torchrun; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0
