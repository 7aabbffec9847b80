"""Start torchrun (or srun) here and stay with it: the only place the launcher runs a training subprocess.

Ctrl-C reaches every process of the terminal's group, torchrun and the ranks included, so the launcher
ignores SIGINT and waits; a SIGTERM sent to the launcher alone is passed on to torchrun. Either way the
ranks stop at a step boundary after rank 0 wrote last.pt, and the launcher exits non-zero.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("distrain", "torch", "torchvision"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def write_launch_record(run_dir: str, record: dict) -> None:
    """RUN_DIR/launch.json: what was launched, where and with which versions."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(),
              "argv": sys.argv, "versions": versions(), **record}
    path = os.path.join(run_dir, "launch.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=2)
    os.replace(tmp, path)


def run(argv: list[str], env: dict | None = None) -> tuple[int, str | None]:
    """Run argv to the end. Returns (exit code, name of the signal that asked us to stop, if any)."""
    received: list[str] = []
    proc = subprocess.Popen(argv, env=env)

    def on_signal(signum, frame):
        received.append(signal.Signals(signum).name)
        if signum == signal.SIGTERM:
            proc.send_signal(signal.SIGTERM)  # SIGINT already reached torchrun through the terminal

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return proc.wait(), (received[0] if received else None)
            except KeyboardInterrupt:  # pragma: no cover - handler above replaces the default
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
