"""How data-loader workers start: from a fork server, never by forking a rank. Imports no torch.

    start_server(cfg.workers)            # early in a rank, so the server imports while the rank sets up
    DataLoader(..., multiprocessing_context=worker_context())

By the time its loaders start, a rank has gloo, OpenMP and TensorBoard threads, and fork() copies any
lock one of them holds at that instant: a worker forked then can hang for good (seen once in CI, a
validation worker stuck inside os.fork). The fork server is a fresh single-threaded process that
imports distrib.data (torch included) once; workers forked from it start in milliseconds. Python 3.14
makes forkserver the default on Linux for the same reason.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import multiprocessing.forkserver

PRELOAD = ["distrib.data"]  # what every worker needs, imported once in the server


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()  # not on Windows


def start_server(workers: int = 1) -> None:
    """Start this process's fork server now, if it will have loader workers (idempotent). Called
    before the rank imports torch, the server's imports overlap the rank's own."""
    if workers > 0 and available():
        multiprocessing.set_forkserver_preload(PRELOAD)
        multiprocessing.forkserver.ensure_running()


def worker_context() -> multiprocessing.context.BaseContext | None:
    """The context for DataLoader(multiprocessing_context=...): forkserver where there is one."""
    if not available():
        return None  # the platform's default (spawn)
    start_server()
    return multiprocessing.get_context("forkserver")
