"""A rank's failure, said once in one line: what went wrong, on which rank and host, and where the full
traceback is. The launcher prints that line instead of torchrun's dump (which stays under RUN_DIR/logs/).

    with reported_failures(run_dir, rank):
        train.main(cfg)

Exceptions whose message is written for users (ConfigError, or a class with `user_facing = True`) are
shown as they are; others with their type name.
Bad input that only a rank can find (a ConfigError: a checkpoint that does not fit, a dataset too small)
is marked as such, so the launcher exits 2 as for any bad input; anything else is a run-time failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import traceback

from distrib.config import ConfigError
from distrib.files import read_json, remove_quietly, write_atomic
from distrib.paths import RunPaths

log = logging.getLogger("distrain")


@contextlib.contextmanager
def reported_failures(run_dir: str, rank: int):
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        record(run_dir, rank, e)
        raise


def record(run_dir: str, rank: int, exc: BaseException) -> None:
    """Write this rank's failure record and its full traceback under RUN_DIR/logs/ (never raises)."""
    try:
        paths = RunPaths(run_dir)
        os.makedirs(paths.logs, exist_ok=True)
        trace = paths.traceback(rank)
        with open(trace, "w") as fh:
            fh.write("".join(traceback.format_exception(exc)))
        lines = str(exc).strip().splitlines()
        message = lines[0] if lines else type(exc).__name__
        if not isinstance(exc, ConfigError) and not getattr(exc, "user_facing", False):
            message = f"{type(exc).__name__}: {message}"  # an unexpected error: its type says what it is
        entry = {"rank": rank, "host": socket.gethostname(), "time": time.time(), "message": message[:2000],
                 "bad_input": isinstance(exc, ConfigError), "traceback": trace}
        write_atomic(paths.failure(rank), entry, as_json=True)
    except Exception:  # reporting must never hide the original error
        pass


def first_failure(run_dir: str) -> dict | None:
    """The earliest failure any rank of this run recorded (the cause; later ones are usually echoes)."""
    entries = [e for e in map(read_json, _records(RunPaths(run_dir))) if e is not None]
    if not entries:
        return None
    # A bad-input record is the cause even if another rank's echo (a broken pipe) came first.
    return min(entries, key=lambda e: (not e.get("bad_input"), e.get("time", 0)))


def clear(run_dir: str) -> None:
    """Forget the failures of earlier attempts (a relaunch or a torchrun restart starts clean)."""
    for path in _records(RunPaths(run_dir), ending=""):
        remove_quietly(path)


def _records(paths: RunPaths, ending: str = ".json") -> list[str]:
    """The failure records in RUN_DIR/logs/ (with ending="": their temp files too)."""
    try:
        names = os.listdir(paths.logs)
    except OSError:
        return []
    return [os.path.join(paths.logs, n) for n in names
            if n.startswith(RunPaths.FAILURE_PREFIX) and n.endswith(ending)]
