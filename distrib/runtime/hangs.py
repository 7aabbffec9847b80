"""Where a hang leaves its evidence, named once: RUN_DIR/logs/hang/. Torch-free (the launcher and
`distrain status` read it; distrib/runtime/watchdog.py writes it).

    rankR-HOST-attemptN.stack   Python stacks of every thread of rank R (faulthandler), written by the rank itself
                                when it has made no step for --dist-timeout seconds, plus the error it gave
                                up with (HOST: its address; N: its agent's restart count)
    rankR-HOST-attemptN.fr      its Flight Recorder trace (the last collectives, pickled; read it with
                                `python -m torch.distributed.flight_recorder.fr_trace`)
    nccl-trace-rankR            NCCL's own Flight Recorder dump on a timeout (GPU runs)
    hung.txt                    the one-line explanation of the last hang (which rank, on which host, why)
"""

from __future__ import annotations

import os


def hang_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "logs", "hang")


def stack_file(run_dir: str, rank: int, host: str, attempt: int) -> str:
    return os.path.join(hang_dir(run_dir), f"rank{rank}-{host}-attempt{attempt}.stack")


def trace_file(stack_path: str) -> str:
    return stack_path[: -len(".stack")] + ".fr"


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


def describe(run_dir: str) -> list[str]:
    """What the launcher and `distrain status` print after a failed run: the last hang's explanation and
    the evidence files (none: nothing)."""
    line, files = evidence(run_dir)
    if not files:
        return []
    shown = ", ".join(files[:6]) + (f" (+{len(files) - 6} more)" if len(files) > 6 else "")
    return ([f"hang: {line}"] if line else []) + [f"hang evidence: {shown}"]
