"""How data-loader workers start: from a fork server, never by forking a rank. Imports no torch.

    start_server(cfg.workers)            # early in a rank, so the server imports while the rank sets up
    DataLoader(..., **loader_options(cfg.workers))

By the time its loaders start, a rank has gloo, OpenMP and TensorBoard threads, and fork() copies any
lock one of them holds at that instant: a worker forked then can hang for good (seen once in CI, a
validation worker stuck inside os.fork). The fork server is a single-threaded process that has
distrib.data.loaders (torch included) imported: a new interpreter that imports it, or, in a rank forked from
torchrun's agent (still one thread, torch already imported), a fork of the rank made before any thread
starts. Workers forked from it start in milliseconds. Python 3.14
makes forkserver the default on Linux for the same reason.

A worker started that way is the server's child, not the rank's, so DataLoader's own check ("is my
parent alive?") watches the server, which in turn lives as long as any worker holds its pipe: a rank
killed with SIGKILL would leave both running for good. Each worker therefore watches its rank itself
(`exit_with`) and ends when the rank ends, however it ends.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.util
import os
import select
import shutil
import socket
import sys
import tempfile
import threading
import time

# What every worker needs, imported once in the server. torchvision.io (decode_jpeg) by name: importing
# torchvision pulls in torch._dynamo and triton, ~100 MB that each worker would otherwise import for itself.
# fork_server: the server's own quick exit (distrib/runtime/quick_exit.py).
PRELOAD = ["distrib.data.loaders", "torchvision.io", "distrib.data.fork_server"]


def available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()  # not on Windows


def start_server(workers: int) -> None:
    """Start this process's fork server now, if it will have loader workers (idempotent). Called
    before the rank imports torch, the server's imports overlap the rank's own. A rank forked from
    torchrun's agent (distrib/agent.py) has torch imported already and, just forked, one thread: its own
    fork is then the server, with nothing to import (~4 CPU-s saved a rank)."""
    if workers > 0 and available():
        _short_socket_folder()
        multiprocessing.set_forkserver_preload(PRELOAD)
        if "torch" in sys.modules and _one_thread():
            _fork_server_from_here()
        multiprocessing.forkserver.ensure_running()


def _one_thread() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fork_server_from_here() -> None:
    """What multiprocessing.forkserver.ensure_running does, with a fork of this single-threaded process as the
    server instead of a new interpreter that imports PRELOAD: the same socket, "alive" pipe and server loop
    (forkserver.main); the fork keeps only those and stdin/stdout/stderr open."""
    from multiprocessing import connection, forkserver, resource_tracker

    for module in PRELOAD:
        __import__(module)
    server = forkserver._forkserver
    with server._lock:
        if server._forkserver_pid is not None:
            return
        resource_tracker.ensure_running()
        with socket.socket(socket.AF_UNIX) as listener:
            address = connection.arbitrary_address("AF_UNIX")
            listener.bind(address)
            os.chmod(address, 0o600)
            listener.listen()
            alive_r, alive_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    keep = {0, 1, 2, listener.fileno(), alive_r}
                    for fd in map(int, os.listdir("/proc/self/fd")):
                        if fd not in keep:
                            with contextlib.suppress(OSError):
                                os.close(fd)
                    forkserver.main(listener.fileno(), alive_r, [])
                finally:
                    os._exit(0)  # the server's loop ends when its rank does; no teardown
            os.close(alive_r)
        server._forkserver_address, server._forkserver_alive_fd, server._forkserver_pid = address, alive_w, pid


SOCKET_PATH_MAX = 107  # bytes of an AF_UNIX socket path on Linux (sun_path, less its NUL)
SOCKET_NAMES = len("/pymp-XXXXXXXX/listener-XXXXXXXX")


def _short_socket_folder() -> None:
    """multiprocessing binds the fork server's socket (and the ones that pass file descriptors to workers)
    at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX. Under a long TMPDIR (cluster jobs often get per-job scratch
    paths) that fails with "AF_UNIX path too long"; the folder then goes to /tmp, removed at exit as usual.
    (multiprocessing.util.get_temp_dir reads the folder from the process's _config: set it first.)"""
    config = multiprocessing.current_process()._config
    if config.get("tempdir") or len(tempfile.gettempdir()) + SOCKET_NAMES <= SOCKET_PATH_MAX:
        return
    folder = tempfile.mkdtemp(prefix="pymp-", dir="/tmp")
    multiprocessing.util.Finalize(None, shutil.rmtree, args=(folder, True), exitpriority=-100)
    config["tempdir"] = folder


def loader_options(workers: int) -> dict:
    """DataLoader keyword arguments for how this process's loader workers start and end."""
    if workers == 0 or not available():
        return {}  # no workers; or spawn (Windows): workers are the rank's children, DataLoader watches it
    start_server(workers)
    return {"multiprocessing_context": multiprocessing.get_context("forkserver"),
            "worker_init_fn": functools.partial(exit_with, os.getpid())}


def exit_with(rank_pid: int, _worker_id: int) -> None:
    """In a worker (DataLoader's worker_init_fn): end this process as soon as the rank `rank_pid` ends."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(rank_pid)  # readable once the process has exited; no polling
            select.select([fd], [], [])
        except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3), or the rank is already gone
            while _alive(rank_pid):
                time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-rank", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True
