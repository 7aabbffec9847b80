"""One node of a SLURM job (srun, one task per node; sbatch or an salloc shell): find this node's part in the
job's rendezvous here, at run time, then become its torchrun.

    python -m launch.node --procs 8 --device cuda --max-restarts 0 RUN_DIR
    python -m launch.node --endpoint          # prints the job's rendezvous HOST:PORT (sbatch --launcher srun)

The rendezvous is on the job's first node, at the job's port (launch/torchrun.py). As with a local multi-node
launch (launch/network.py), the node that carries that address hosts the store, every node names its own
address toward it (--local-addr), and its ranks get the interface that routes there (GLOO_/NCCL_SOCKET_IFNAME;
a value in the job's environment wins). No torch import: torchrun replaces this process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from distrib.paths import RunPaths
from launch import network, torchrun


def job_head(environ) -> str:
    """The job's first host (`scontrol show hostnames` expands the node list)."""
    names = subprocess.run(["scontrol", "show", "hostnames", environ["SLURM_JOB_NODELIST"]], capture_output=True,
                           text=True, check=True).stdout.split()
    return names[0]


def node_command(args: argparse.Namespace, environ, head: str, node: torchrun.NodeRole,
                 python: str) -> tuple[list[str], dict[str, str]]:
    """This node's torchrun line and its environment: a pure function of the job's facts and the node's role."""
    paths = RunPaths(args.run_dir)
    rdzv = torchrun.slurm_rendezvous(environ["SLURM_NNODES"], head, environ["SLURM_JOB_ID"])
    argv = torchrun.torchrun_argv(python, args.procs, paths.torchrun_logs, ["train", paths.config],
                                  args.max_restarts, rdzv, node)
    extra = torchrun.node_env(args.device, RunPaths(args.run_dir), environ, node)
    return argv, torchrun.rank_env(args.device, args.procs, environ, extra,
                                     cpus=int(environ.get("SLURM_CPUS_ON_NODE", 0)) or None)  # the job's share


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launch.node", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint", action="store_true", help="print the job's rendezvous HOST:PORT and exit")
    parser.add_argument("--procs", type=int, default=1, help="processes on this node")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--max-restarts", type=int, default=0)
    parser.add_argument("run_dir", nargs="?")
    args = parser.parse_args(argv)
    if not args.endpoint and not args.run_dir:
        parser.error("give the RUN_DIR whose config.toml the ranks read")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    head = job_head(environ)
    if args.endpoint:
        print(f"{head}:{torchrun.rdzv_port(environ['SLURM_JOB_ID'])}")
        return
    node_id = int(environ.get("SLURM_NODEID", "0"))
    net, node = network.slurm_node(head, node_id)
    command, env = node_command(args, environ, head, node, sys.executable)
    print(f"distrain: node {node_id}: {_part(net, node, head)}"
          + "".join(f"; {k}={env[k]}" for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME") if k in env), flush=True)
    os.execve(command[0], command, env)


def _part(net: network.NodeNet | None, node: torchrun.NodeRole, head: str) -> str:
    if net is not None:
        return net.describe()
    verb = "hosts" if node.is_host else "joins"
    return f"{verb} the rendezvous at {head} ({head} is loopback or unresolved here: SLURM's node order decides)"


if __name__ == "__main__":
    main()
