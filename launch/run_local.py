"""Start torchrun (or srun) here and stay with it: the only place the launcher runs a training subprocess.

A stop request (Ctrl-C, SIGTERM, SIGHUP) touches RUN_DIR/STOP, the same file SLURM's preemption signal
touches: every rank sees it at the next step boundary, rank 0 writes last.pt, and torchrun ends cleanly.
torchrun runs in its own session so the terminal's Ctrl-C reaches the launcher alone; a second request
kills its whole process group. If the launcher itself dies (SIGKILL, the OOM killer), torchrun gets SIGTERM
from the kernel (Linux's parent-death signal): its ranks stop as for a stop request, none trains on unwatched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata

from distrib.files import write_atomic
from distrib.paths import RunPaths

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
    write_atomic(RunPaths(run_dir).launch_record, record, as_json=True, indent=2)


PR_SET_PDEATHSIG = 1  # prctl(2)


def _term_when_launcher_dies(launcher: int):
    """preexec_fn for torchrun: SIGTERM to it when the launcher's thread that started it ends (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, in the launcher: nothing is imported after fork

    def arm() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != launcher:  # the launcher died before prctl: the signal would never come
            os.kill(os.getpid(), signal.SIGTERM)
    return arm


def run(argv: list[str], env: dict, stop_file: str, say=print, stderr_path: str | None = None
        ) -> tuple[int, list[str]]:
    """Run argv to the end. Returns (exit code, the names of the stop signals received, in order).
    The first signal asks for a stop at the next step boundary (STOP file); a second one kills the whole
    process tree at once: checkpoints are written atomically, so last.pt is then the last whole one.
    stderr_path: where torchrun's own stderr goes (its failure dump), instead of the terminal."""
    received: list[str] = []
    stderr = None
    if stderr_path:
        os.makedirs(os.path.dirname(stderr_path), exist_ok=True)
        stderr = open(stderr_path, "ab")
    try:
        proc = subprocess.Popen(argv, env=env, start_new_session=True, stderr=stderr,
                                preexec_fn=_term_when_launcher_dies(os.getpid()))
    finally:
        if stderr is not None:
            stderr.close()  # the child holds its own copy

    def on_signal(signum, frame):
        received.append(signal.Signals(signum).name)
        if len(received) == 1:
            open(stop_file, "a").close()
            say(f"{received[0]}: stopping at the next step boundary and writing last.pt "
                "(again to stop at once)")
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    old = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
    try:
        return proc.wait(), received
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass(frozen=True)
class RankFailure:
    message: str      # the rank's own one line
    where: str        # "rank 1 on node02; traceback in RUN_DIR/logs/traceback.rank1.txt"
    bad_input: bool   # a ConfigError: the launcher exits 2, as for any bad input

    def __str__(self) -> str:
        return f"{self.message} ({self.where})"


def rank_failure(run_dir: str) -> RankFailure | None:
    """The failing rank's record (distrib/runtime/failure.py) under RUN_DIR/logs/, or None if none wrote one."""
    from distrib.runtime.failure import first_failure

    entry = first_failure(run_dir)
    if entry is None:
        return None
    return RankFailure(entry["message"], f"rank {entry['rank']} on {entry['host']}; traceback in "
                       f"{entry['traceback']}", bool(entry.get("bad_input")))
