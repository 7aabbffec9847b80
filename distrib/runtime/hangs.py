"""What a hang leaves in RUN_DIR/logs/hang/ (the names live in RunPaths). Torch-free (the launcher and
`distrain status` read it; distrib/runtime/watchdog.py writes it).

    rankR-HOST-attemptN.stack   Python stacks of every thread of rank R (faulthandler), written by the rank itself
                                when it has made no step for --dist-timeout seconds, plus the error it gave
                                up with (HOST: its address; N: its agent's restart count)
    flight-recorder-attemptN/rankR
                                its Flight Recorder trace (the last collectives, pickled), a folder per attempt
                                as fr_trace reads it: `python -m torch.distributed.flight_recorder.fr_trace -j
                                --allow-incomplete-ranks FOLDER` (-j: each rank's entries; without it fr_trace
                                matches the ranks' collectives, and needs every rank's trace)
    nccl-trace-rankR            NCCL's own Flight Recorder dump on a timeout (GPU runs)
    hung.txt                    the one-line explanation of the last hang (which rank, on which host, why)
"""

from __future__ import annotations

import os

from distrib.paths import RunPaths


def evidence(run_dir: str) -> tuple[str | None, list[str]]:
    """(the last hang's one-line explanation, the non-empty files it left, newest first)."""
    paths = RunPaths(run_dir)
    try:
        names = os.listdir(paths.hangs)
    except OSError:
        return None, []
    files = [p for p in (os.path.join(paths.hangs, n) for n in names) if p != paths.hang_explanation]
    files = sorted((p for p in files if (os.path.isfile(p) and os.path.getsize(p) > 0) or os.path.isdir(p)),
                   key=os.path.getmtime, reverse=True)  # a folder: one attempt's Flight Recorder traces
    try:
        with open(paths.hang_explanation) as fh:
            line = fh.read().strip() or None
    except OSError:
        line = None
    return line, files


def describe(run_dir: str) -> list[str]:
    """What the launcher and `distrain status` print after a failed run: the last hang's explanation and
    the evidence files (none: nothing)."""
    line, files = evidence(run_dir)
    if not files:
        return []
    shown = ", ".join(files[:6]) + (f" (+{len(files) - 6} more)" if len(files) > 6 else "")
    return ([f"hang: {line}"] if line else []) + [f"hang evidence: {shown}"]
