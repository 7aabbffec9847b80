"""The terminal, in one place: the two consoles, a one-line error or warning, a long scan's progress, and
durations (distrib/words.py, shared with the ranks). Torch-free."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from rich.console import Console

from distrib.words import duration

__all__ = ["out", "err", "error", "warn", "progress", "duration"]


class _Stream:
    """sys.stdout or sys.stderr (looked up at each write), where a reader that has gone away
    (`distrain launch ... | grep -m1 epoch`, then timeout's SIGTERM) silences the printing instead of ending the
    command: the launcher still stops its ranks at a step boundary, records outcome.json and exits with its
    code, where a BrokenPipeError raised inside its signal handler would have killed it first."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr):  # isatty, fileno, encoding...: rich asks the stream itself
        return getattr(getattr(sys, self.name), attr)

    def write(self, text: str) -> int:
        try:
            return getattr(sys, self.name).write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            getattr(sys, self.name).flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        # Python's advice for a closed pipe: point the descriptor at /dev/null, so that neither later prints
        # nor the flush at exit fail again
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, getattr(sys, self.name).fileno())
        os.close(null)


out = Console(file=_Stream("stdout"), highlight=False)  # results: what a script may read (a dry run, a table)
err = Console(file=_Stream("stderr"), highlight=False)  # what goes wrong, and how it goes


def error(message: str) -> None:
    """One red line on stderr saying what is wrong and how to fix it."""
    err.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


@contextmanager
def progress(console: Console | None, label: str):
    """progress(done, total) for a long scan: a live bar with ETA on a terminal, else a line every 10 s."""
    if console is not None and console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    start, last = time.monotonic(), [0.0]

    def line(done: int, total: int) -> None:
        now = time.monotonic() - start
        if console is None or (now - last[0] < 10 and 0 < done < total):
            return
        last[0] = now
        eta = f", ETA {(total - done) * now / done:.0f} s" if 0 < done < total else ""
        console.print(f"{label}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {now:.0f} s{eta}",
                      markup=False)
    yield line
