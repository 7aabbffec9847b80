"""Where a hang leaves its evidence, named once: RUN_DIR/logs/hang/. Torch-free (the launcher and
`distrain status` read it; distrib/watchdog.py writes it).

    rankR-attemptN.stack   Python stacks of every thread of rank R (faulthandler), written by the rank itself
                           when it has made no step for --dist-timeout seconds, plus the error it gave up with
    rankR-attemptN.fr      its Flight Recorder trace (the last collectives, pickled; read it with
                           `python -m torch.distributed.flight_recorder.fr_trace`)
    nccl-trace-rankR       NCCL's own Flight Recorder dump on a timeout (GPU runs)
    hung.txt               the one-line explanation of the last hang (which rank, on which host, why)
"""

from __future__ import annotations

import os


def hang_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "logs", "hang")


def stack_file(run_dir: str, rank: int, attempt: int) -> str:
    return os.path.join(hang_dir(run_dir), f"rank{rank}-attempt{attempt}.stack")


def trace_file(run_dir: str, rank: int, attempt: int) -> str:
    return os.path.join(hang_dir(run_dir), f"rank{rank}-attempt{attempt}.fr")


def explanation_file(run_dir: str) -> str:
    return os.path.join(hang_dir(run_dir), "hung.txt")


def evidence(run_dir: str) -> tuple[str | None, list[str]]:
    """(the last hang's one-line explanation, the non-empty files it left, newest first)."""
    folder = hang_dir(run_dir)
    try:
        names = os.listdir(folder)
    except OSError:
        return None, []
    paths = [os.path.join(folder, n) for n in names if n != "hung.txt"]
    paths = sorted((p for p in paths if os.path.isfile(p) and os.path.getsize(p) > 0),
                   key=os.path.getmtime, reverse=True)
    try:
        with open(explanation_file(run_dir)) as fh:
            line = fh.read().strip() or None
    except OSError:
        line = None
    return line, paths
