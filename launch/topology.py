"""What runs where: from --nodes/--gpus/--procs/--strategy to a plan and the exact torchrun command line.

Everything here is a pure function of its inputs (the config and what the machine shows), so dry runs
and tests see exactly what a real launch runs. No torch import.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass

from distrib.config import ConfigError, RunConfig

DEFAULT_RDZV_PORT = 29400


@dataclass(frozen=True)
class Plan:
    mode: str              # standalone | c10d | salloc | slurm | dp
    min_nodes: int
    max_nodes: int
    procs_per_node: int
    device: str            # cuda | cpu
    global_batch: int      # at the largest world size
    lr: float              # scaled to that global batch
    rdzv_endpoint: str | None
    rdzv_id: str | None

    @property
    def world_size(self) -> int:
        return self.max_nodes * self.procs_per_node

    @property
    def nnodes(self) -> str:
        return str(self.max_nodes) if self.min_nodes == self.max_nodes else f"{self.min_nodes}:{self.max_nodes}"


def visible_gpus(environ=None) -> int:
    """GPUs this process could use, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi -L."""
    env = os.environ if environ is None else environ
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return len([d for d in cvd.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def allocation_nodes(environ=None) -> int | None:
    """Nodes of the SLURM allocation this shell is in (salloc, or a batch script), None outside one.
    A job step (srun) is not an allocation shell: distrain must not start steps from inside a step."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env or "SLURM_STEP_ID" in env:
        return None
    return int(env.get("SLURM_NNODES", env.get("SLURM_JOB_NUM_NODES", "1")))


def make_plan(cfg: RunConfig, gpus_here: int, allocated_nodes: int | None = None) -> Plan:
    """Resolve the topology from the options; whether this machine has the GPUs is preflight's question."""
    lo, hi = cfg.min_max_nodes()
    gpus = gpus_here if cfg.gpus is None else cfg.gpus
    device = "cuda" if gpus > 0 else "cpu"
    if cfg.strategy == "dp":
        procs, mode = 1, "dp"
    else:
        procs = gpus if gpus > 0 else cfg.procs
        mode = "standalone"
        if cfg.slurm:
            mode = "slurm"
        elif allocated_nodes and not cfg.rdzv_endpoint:
            mode = "salloc"  # the allocation decides the node count; a different --nodes is a mistake
            if hi > 1 and (lo, hi) != (allocated_nodes, allocated_nodes):
                raise ConfigError(f"--nodes {cfg.nodes} but this SLURM allocation has {allocated_nodes} node(s); "
                                  f"drop --nodes or use --nodes {allocated_nodes}")
            lo = hi = allocated_nodes
        elif hi > 1 or cfg.rdzv_endpoint:
            mode = "c10d"
            if not cfg.rdzv_endpoint:
                raise ConfigError(f"--nodes {cfg.nodes} outside SLURM needs --rdzv-endpoint HOST:PORT (the first "
                                  "node's address); run the same command on every node, or use --slurm")
    global_batch = cfg.global_batch(procs * hi)
    endpoint = cfg.rdzv_endpoint
    if endpoint and ":" not in endpoint:
        endpoint = f"{endpoint}:{DEFAULT_RDZV_PORT}"
    return Plan(mode=mode, min_nodes=lo, max_nodes=hi, procs_per_node=procs, device=device,
                global_batch=global_batch, lr=cfg.scaled_lr(procs * hi), rdzv_endpoint=endpoint,
                rdzv_id=rdzv_id(cfg) if mode == "c10d" else None)


def rdzv_id(cfg: RunConfig) -> str:
    """Derived from what every node's identical command line says, so all nodes agree without talking."""
    key = "|".join(str(x) for x in (cfg.run_dir, cfg.rdzv_endpoint, cfg.arch, cfg.data, cfg.nodes))
    return "distrain-" + hashlib.sha1(key.encode()).hexdigest()[:12]


def torchrun_argv(plan: Plan, cfg: RunConfig, python: str, config_path: str,
                  node: NodeRole | None = None) -> list[str]:
    """The torchrun (torch.distributed.run) command line of one node; `node` says its part in the
    rendezvous (None: leave it to torchrun, as on loopback where every agent is on this machine)."""
    argv = [python, "-m", "torch.distributed.run"]
    if plan.mode in ("standalone", "dp"):
        argv += ["--standalone", "--nnodes", "1"]
    else:
        argv += ["--nnodes", plan.nnodes, "--rdzv-backend", "c10d", "--rdzv-endpoint", plan.rdzv_endpoint,
                 "--rdzv-id", plan.rdzv_id]
        if node is not None:
            # torchrun guesses both from the hostname; on a node whose name resolves to loopback or to another
            # NIC it guesses wrong (no store host at all, or workers looking for the store at "localhost").
            argv += ["--rdzv-conf", f"is_host={int(node.is_host)}", "--local-addr", node.local_addr]
    argv += ["--nproc-per-node", str(plan.procs_per_node), "--max-restarts", str(cfg.max_restarts),
             # Ranks write stdout straight to the console (rank 0 the progress, others only warnings); their
             # stderr goes to per-rank files, so a failing rank's traceback shows once, in torchrun's summary.
             "--log-dir", os.path.join(cfg.run_dir, "logs", "torchrun"), "--redirects", "2"]
    return argv + ["-m", "distrib", "train", config_path]


def standalone_argv(python: str, procs: int, log_dir: str, module_args: list[str]) -> list[str]:
    """torchrun for a tool on this node alone (eval, predict): P processes, stderr to per-rank files."""
    return [python, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", str(procs),
            "--log-dir", log_dir, "--redirects", "2", "-m", "distrib", *module_args]


@dataclass(frozen=True)
class NodeRole:
    """This node's part in a c10d rendezvous (launch/network.py finds it): does it carry the endpoint
    address, the address the other nodes reach it at, and the interface that carries that address."""
    is_host: bool
    local_addr: str
    ifname: str | None = None


# Env a node's ranks get on top of the user's (a user's own setting wins): the interface that routes to the
# rendezvous host for gloo and NCCL, and Flight Recorder buffers so a timed-out collective leaves a trace.
FLIGHT_RECORDER_ENTRIES = "2000"


def node_env(plan: Plan, node: NodeRole | None, hang_dir: str, environ: dict) -> dict[str, str]:
    """The variables this node's ranks get from distrain, leaving out any the user already set."""
    env = {"TORCH_FR_BUFFER_SIZE": FLIGHT_RECORDER_ENTRIES}
    if plan.mode == "c10d":
        # With the agents' shared store, a node that joins a later round (elastic scale-up: a lost node
        # coming back) waits forever for the store address the old rank-0 agent never republishes
        # (torch 2.14); unshared, rank 0's worker hosts a fresh store every round (distrib/runtime/process_group.py).
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if plan.device == "cuda":  # NCCL writes its own trace from its watchdog when a collective times out
        env |= {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
                "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": os.path.join(hang_dir, "nccl-trace-rank")}
    if node is not None and node.ifname:
        env |= {"GLOO_SOCKET_IFNAME": node.ifname, "NCCL_SOCKET_IFNAME": node.ifname}
    return {k: v for k, v in env.items() if k not in environ}


def salloc_argv(plan: Plan, cfg: RunConfig, python: str, config_path: str, head: str, job_id: str) -> list[str]:
    """Inside an salloc shell: one torchrun per allocated node, started by srun, rendezvous on the first node."""
    node_plan = Plan(**{**plan.__dict__, "mode": "c10d", "rdzv_endpoint": f"{head}:{20000 + int(job_id) % 20000}",
                        "rdzv_id": job_id})
    srun = ["srun", f"--nodes={plan.max_nodes}", f"--ntasks={plan.max_nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1"]
    return srun + torchrun_argv(node_plan, cfg, python, config_path)
