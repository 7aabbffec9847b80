"""Leave a process that has imported torch without Python's interpreter teardown. Imports no torch.

    sys.exit(code)  ->  quick_exit.leave(code)     # at the end of a rank, a tool, the CLI

Python's teardown frees every module and object one by one. After `import torch, torchvision` that alone costs
~0.8 s of CPU (benchmarks/process_exit.py: 3.7 CPU-s a process against 2.9 with this exit, docs/performance.md
section 8), paid again by every rank, every data-loader fork server and every tool. The teardown's
parts that matter happen here first, in the interpreter's own order: non-daemon threads are joined, atexit
functions run (multiprocessing's finalizers, logging), every open file is flushed; then os._exit.
"""

from __future__ import annotations

import _io
import atexit
import gc
import os
import sys
import threading
from typing import NoReturn


def leave(code: int | str | None = 0) -> NoReturn:
    """End this process with `code` as sys.exit would (None: 0; a message: printed, 1), without the teardown."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    try:
        _join_threads()
        atexit._run_exitfuncs()
        _flush_open_files()
    finally:
        os._exit(code or 0)


def at_exit() -> None:
    """For a process whose end is not ours to write (the data-loader fork server: its loop ends when its rank
    does, and its teardown would cost as much as the rank's): leave quickly once its atexit functions run.
    atexit runs the newest first, so this one runs the others itself."""
    atexit.register(_leave_from_atexit)


def _leave_from_atexit() -> None:
    atexit.unregister(_leave_from_atexit)  # leave() runs the atexit functions again: not this one
    leave(0)


def _join_threads() -> None:
    """What the interpreter does first at exit: wait for every thread that is not a daemon."""
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()


def _flush_open_files() -> None:
    """Buffered data of files still open (the teardown would flush them as it frees them): text layers
    first, as they write into the binary buffers beneath. (The C base classes, not io's ABCs: an ABC's
    isinstance asks each object for its class, and some of torch's answer with a deprecation warning;
    the type of an object never does.)"""
    files = [obj for obj in gc.get_objects() if issubclass(type(obj), _io._IOBase)]
    for layer in (_io._TextIOBase, _io._BufferedIOBase):
        for f in files:
            if issubclass(type(f), layer):
                try:
                    if not f.closed and f.writable():
                        f.flush()
                except (OSError, ValueError):
                    pass
