"""THE torchrun command line, and the environment of a node's ranks. Pure functions of their inputs.

Every way distrain starts torchrun goes through `torchrun_argv`: a local single node (standalone), a local
multi-node c10d rendezvous, the tools (eval, predict), and on SLURM (an salloc shell or an sbatch job) the
per-node payload `python -m launch.node`, which finds its node's part at run time and builds its line here.
So the log flags, the rendezvous flags and the port formula are written once. No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from distrib.paths import RunPaths
from distrib.runtime.env import omp_threads

if TYPE_CHECKING:
    from distrib.config import RunConfig
    from launch.topology import Plan

# Ranks write stdout straight to the console (rank 0 the progress, others only warnings); their stderr goes to
# per-rank files under the log dir, so a failing rank's traceback shows once, in torchrun's failure summary.
# torchrun makes a fresh folder per agent under the log dir, so nodes sharing the run dir never collide.
LOG_REDIRECTS = "2"
# torchrun (torch.distributed.run.main, its options unchanged) whose ranks are forked from it once it has
# imported torch and the training code, instead of each importing them again (distrib/agent.py).
AGENT_MODULE = "distrib.agent"
# The node entry point of a SLURM job step (one task per node): see launch/node.py.
NODE_MODULE = "launch.node"
# Flight Recorder buffers, so a timed-out collective leaves a trace.
FLIGHT_RECORDER_ENTRIES = "2000"


def rdzv_port(job_id: str | int) -> int:
    """The rendezvous port of a SLURM job: derived from its id, so every node (and every requeue) agrees."""
    return 20000 + int(job_id) % 20000


@dataclass(frozen=True)
class Rendezvous:
    """A c10d rendezvous that several nodes join."""
    nnodes: str      # "N" or "MIN:MAX"
    endpoint: str    # HOST:PORT
    run_id: str
    last_call_s: int | None = None  # elastic: how long a round waits for more nodes once MIN have joined


@dataclass(frozen=True)
class NodeRole:
    """A node's part in a c10d rendezvous (launch/network.py finds it): does it carry the endpoint address (it
    hosts the store), the address the other nodes reach it at, and the interface that carries that address.
    local_addr None: torchrun's own guess is right (every node on this machine)."""
    is_host: bool
    local_addr: str | None = None
    ifname: str | None = None


def torchrun_argv(python: str, procs: int, log_dir: str, module_args: list[str], max_restarts: int = 0,
                  rdzv: Rendezvous | None = None, node: NodeRole | None = None) -> list[str]:
    """torchrun for one node: P ranks running `distrib MODULE_ARGS`, alone (rdzv None) or joining a
    c10d rendezvous as `node` says (None: leave it to torchrun, as on loopback)."""
    argv = [python, "-m", AGENT_MODULE]
    if rdzv is None:
        argv += ["--standalone", "--nnodes", "1"]
    else:
        argv += ["--nnodes", rdzv.nnodes, "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv.endpoint,
                 "--rdzv-id", rdzv.run_id]
    joins = rdzv is not None and node is not None
    # torchrun guesses is_host and the local address from the hostname; on a node whose name resolves to
    # loopback or to another NIC it guesses wrong (no store host at all, or workers looking for the store at
    # "localhost").
    conf = [f"is_host={int(node.is_host)}"] if joins else []
    conf += [f"last_call_timeout={rdzv.last_call_s}"] if rdzv is not None and rdzv.last_call_s is not None else []
    argv += ["--rdzv-conf", ",".join(conf)] if conf else []
    argv += ["--local-addr", node.local_addr] if joins and node.local_addr else []
    argv += ["--nproc-per-node", str(procs), "--max-restarts", str(max_restarts),
             "--log-dir", log_dir, "--redirects", LOG_REDIRECTS]
    return argv + ["-m", "distrib", *module_args]


def plan_argv(plan: Plan, cfg: RunConfig, python: str, node: NodeRole | None = None) -> list[str]:
    """What a local launch runs on this node for the plan: torchrun alone or in the plan's c10d rendezvous;
    in an salloc shell, srun starting the node payload on every allocated node."""
    paths = RunPaths(cfg.run_dir)
    if plan.mode == "salloc":
        return salloc_argv(plan.max_nodes, python,
                           node_args(plan.procs_per_node, plan.device, cfg.max_restarts, cfg.run_dir))
    elastic = plan.min_nodes < plan.max_nodes
    rdzv = Rendezvous(plan.nnodes, plan.rdzv_endpoint, plan.rdzv_id, cfg.rdzv_last_call if elastic else None) \
        if plan.mode == "c10d" else None
    return torchrun_argv(python, plan.procs_per_node, paths.torchrun_logs, ["train", paths.config],
                         cfg.max_restarts, rdzv, node)


def slurm_rendezvous(nnodes: str, head: str, job_id: str) -> Rendezvous:
    """A SLURM job's rendezvous: on its first node, at the job's port, named by the job id."""
    return Rendezvous(nnodes=nnodes, endpoint=f"{head}:{rdzv_port(job_id)}", run_id=job_id)


def node_args(procs: int, device: str, max_restarts: int, run_dir: str) -> list[str]:
    """What srun starts (after the interpreter) on every node of a SLURM job, sbatch or salloc: launch/node.py,
    which finds its node's part at run time and execs the torchrun line above."""
    return ["-m", NODE_MODULE, "--procs", str(procs), "--device", device, "--max-restarts", str(max_restarts),
            run_dir]


def endpoint_args() -> list[str]:
    """launch/node.py printing the job's HOST:PORT (sbatch --launcher srun: the ranks rendezvous themselves)."""
    return ["-m", NODE_MODULE, "--endpoint"]


def salloc_argv(nodes: int, python: str, args: list[str]) -> list[str]:
    """Inside an salloc shell: the node payload on every allocated node, one task each."""
    return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            python, *args]


def node_env(device: str, paths: RunPaths, environ: dict, node: NodeRole | None = None,
             elastic: bool = False) -> dict[str, str]:
    """The variables a node's ranks get from distrain, leaving out any already in `environ` (a user's own
    setting wins, GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME each on its own)."""
    env = {"TORCH_FR_BUFFER_SIZE": FLIGHT_RECORDER_ENTRIES}
    if elastic:
        # With the agents' shared store, a node that joins a later round (elastic scale-up: a lost node
        # coming back) waits forever for the store address the old rank-0 agent never republishes
        # (torch 2.14); unshared, rank 0's worker hosts a fresh store every round (distrib/runtime/process_group.py).
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    if device == "cuda":  # NCCL writes its own trace from its watchdog when a collective times out
        env |= {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
                "TORCH_NCCL_DEBUG_INFO_TEMP_FILE": paths.nccl_trace_prefix}
    if node is not None and node.ifname:  # the interface that routes to the rendezvous host
        env |= {"GLOO_SOCKET_IFNAME": node.ifname, "NCCL_SOCKET_IFNAME": node.ifname}
    return {k: v for k, v in env.items() if k not in environ}


def rank_env(device: str, procs: int, environ: dict, extra: dict | None = None,
             cpus: int | None = None) -> dict[str, str]:
    """The whole environment torchrun starts with: `environ`, plus `extra` (node_env), the CPU threads each
    of the node's P processes may use (unless set), and unbuffered output."""
    env = {**environ, **(extra or {})}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # --gpus 0 means CPU even on a GPU machine
    env["OMP_NUM_THREADS"] = omp_threads(procs, env, cpus)
    env["PYTHONUNBUFFERED"] = "1"
    return env
