"""`distrain tensorboard`: the real TensorBoard program over every run, on loopback unless asked otherwise."""

from __future__ import annotations

import getpass
import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path

from distrib.config import ConfigError


def tensorboard_argv(runs_dir: Path, port: int, host: str) -> list[str]:
    return [sys.executable, "-m", "tensorboard.main", "--logdir", str(runs_dir), "--host", host,
            "--port", str(port), "--reload_interval", "15"]


def loopback(host: str) -> bool:
    """Only this machine can reach it (127.0.0.0/8, ::1, localhost)."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def on_login_node() -> bool:
    """A cluster login node: SLURM's client is here but this shell is not inside a job."""
    return shutil.which("sbatch") is not None and "SLURM_JOB_ID" not in os.environ


def serve(runs_dir: Path, port: int, host: str, out, warn) -> int:
    if not runs_dir.is_dir():
        raise ConfigError(f"runs dir {runs_dir} does not exist; pass the folder holding your run dirs "
                          "(default ./runs)")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a port number (1-65535)")
    if not loopback(host):
        warn(f"TensorBoard bound to {host}: anyone who can reach this machine can read your runs")
    out.print(f"TensorBoard over {runs_dir}: [bold]http://{'127.0.0.1' if host == 'localhost' else host}:{port}/[/]",
              soft_wrap=True)
    if on_login_node():
        out.print(f"from your laptop: ssh -N -L {port}:127.0.0.1:{port} {getpass.getuser()}@{socket.getfqdn()}"
                  f"  then open http://127.0.0.1:{port}/", soft_wrap=True)
    sys.stdout.flush()
    argv = tensorboard_argv(runs_dir, port, host)
    os.execv(argv[0], argv)  # become TensorBoard: signals and Ctrl-C reach it directly
