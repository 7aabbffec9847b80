"""`distrain` for the tests without paying for Python's start each time: a server per xdist worker imports
what the command imports (typer, launch, distrib, torch, torchvision: ~4 s of CPU), then forks one real
process per command, as the data loader's fork server does for workers. The forked process is the
command: its own argv, folder, environment, stdout and stderr files, exit code and signals; it runs
`launch.cli.main`, the console script's own function, so its way out (quick_exit) is the real one too.

What a fork does not show: output printed while those modules are imported (a warning at import time) and
options read from the environment when a library loads (OMP_NUM_THREADS: the server starts with the tests'
value). The README's commands and the one-line-error checks of a fresh interpreter run as new processes
(`distrain(..., fresh=True)`), so those stay proven.

Run as a script it is the server: `python tests/warm_cli.py SOCKET`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Every module a command may import: the CLI's own, and the in-process tools' (train, eval, bench, predict...).
PRELOAD = [f"launch.{p.stem}" for p in sorted((ROOT / "launch").glob("*.py")) if p.stem != "__main__"] + \
          [f"distrib.tools.{p.stem}" for p in sorted((ROOT / "distrib" / "tools").glob("*.py"))] + \
          ["distrib.train", "torch._dynamo", "distrib.agent", "torch.distributed.run"]
# (torch and torchvision come with distrib.train; DDP imports _dynamo; the agent is forked too: _forked_agent)
MESSAGE = 1 << 20


# --- the server (its own process, one thread: it forks)

def _command(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python -m launch ARGV` in the request's folder and environment."""
    for target, fd in enumerate(fds):  # stdin, stdout, stderr
        os.dup2(fd, target)
        os.close(fd)
    if request.get("new_session"):
        os.setsid()
    if request.get("netns"):  # what `ip netns exec NAME` does for the network: that namespace's interfaces
        _enter_netns(request["netns"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # TMPDIR is read again, as a new process would
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.argv = [str(Path(sys.modules["launch"].__file__).with_name("__main__.py")), *request["argv"]]
    sys.path[0] = os.getcwd()  # `python -m` puts the current folder first
    _children_forked()
    code = 0
    try:
        from launch.cli import main
        main()  # leaves through quick_exit.leave (os._exit) after a tool ran, else raises SystemExit
    except SystemExit as e:  # as the interpreter reads it: None is 0, a text is printed and is 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _enter_netns(name: str) -> None:
    import ctypes

    clone_newnet = 0x40000000
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, clone_newnet) != 0:
        raise OSError(ctypes.get_errno(), f"setns to network namespace {name}")
    os.close(fd)


class _Forked:
    """What subprocess.Popen returns (pid, wait, poll, returncode), for a process forked by _popen."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout=None) -> int:
        return self._reap(0)

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)


def _popen(argv, *, env, stdout=None, stderr=None, start_new_session=False, preexec_fn=None, **rest):
    """subprocess.Popen for the launcher (launch/run_local.py, launch/sweep.py): `python -m distrib.agent ARGS`
    (the torchrun agent) and `python -m launch ARGS` (a sweep's launches) become forks of this command, which
    has imported what they import; any other command starts as before."""
    from distrib.runtime import quick_exit

    module = argv[2] if argv[:2] == [sys.executable, "-m"] else None
    if module not in ("distrib.agent", "launch") or rest:
        return subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, start_new_session=start_new_session,
                                preexec_fn=preexec_fn, **rest)
    quick_exit._flush_open_files()  # nothing buffered is written twice, by the child's exit too
    pid = os.fork()
    if pid:
        return _Forked(pid)
    try:  # what Popen does between fork and exec, then what `python -m MODULE` does
        if start_new_session:
            os.setsid()
        if stdout is not None:
            os.dup2(stdout.fileno(), 1)
        if stderr is not None:
            os.dup2(1 if stderr == subprocess.STDOUT else stderr.fileno(), 2)
        if preexec_fn is not None:
            preexec_fn()
        if module == "launch":
            _command({"argv": argv[3:], "cwd": os.getcwd(), "env": env}, [])
        os.environ.clear()
        os.environ.update(env)
        tempfile.tempdir = None
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import torch

        torch.set_num_threads(int(env.get("OMP_NUM_THREADS") or torch.get_num_threads()))
        from distrib import agent

        sys.argv = [agent.__file__, *argv[3:]]
        agent.main(argv[3:])  # leaves through quick_exit
    except BaseException:
        import traceback
        traceback.print_exc()
    os._exit(1)


def _children_forked() -> None:
    """A launch in this command forks its torchrun agent from here, as the agent forks its ranks, and a sweep
    forks its points' launches: each is the module's own main (distrib/agent.py, launch/cli.py), in its own
    session where Popen would make one, with the environment, output files and parent-death signal Popen
    would give it; only the new interpreter's imports are left out (~5 CPU-s a launch). fresh=True commands
    start them as new interpreters, as every user's do."""
    import types

    from launch import run_local, sweep

    run_local.subprocess = types.SimpleNamespace(Popen=_popen)
    sweep.subprocess = types.SimpleNamespace(Popen=_popen, STDOUT=subprocess.STDOUT)


def serve(path: str) -> None:
    import importlib
    import select

    for name in PRELOAD:
        importlib.import_module(name)

    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the client waits for this name: bound and listening
    server.listen(16)
    # Commands run at once, side by side (a test starts two nodes' launches): a child's end wakes the loop
    ended_r, ended_w = os.pipe()
    os.set_blocking(ended_w, False)
    signal.set_wakeup_fd(ended_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    running: dict[int, socket.socket] = {}  # pid -> the connection its exit code goes to
    while os.getppid() == parent:  # ends with its xdist worker
        ready, _, _ = select.select([server, ended_r], [], [], 2)
        if ended_r in ready:
            os.read(ended_r, 512)
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            conn = running.pop(pid)
            with contextlib.suppress(OSError):  # a client that has gone (a test's timeout killed it)
                conn.send(str(os.waitstatus_to_exitcode(status)).encode())
            conn.close()
        if server not in ready:
            continue
        conn, _ = server.accept()
        message, fds, _, _ = socket.recv_fds(conn, MESSAGE, 3)
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for fd in (server.detach(), ended_r, ended_w, *(c.detach() for c in running.values())):
                os.close(fd)
            conn.close()
            _command(json.loads(message), fds)
        for fd in fds:
            os.close(fd)
        conn.send(str(pid).encode())
        running[pid] = conn


# --- the client (in the tests' process)

_server: dict = {}


def _socket_path() -> str:
    if not _server:
        folder = tempfile.mkdtemp(prefix="distrain-warm-")
        path = os.path.join(folder, "cli.sock")
        log = open(os.path.join(folder, "server.log"), "w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop("COLUMNS", None)  # read per command (rich reads the live environment when it is unset)
        proc = subprocess.Popen([sys.executable, __file__, path], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        _server.update(proc=proc, path=path, log=log.name)
        atexit.register(lambda: (proc.kill(), proc.wait(), shutil.rmtree(folder, ignore_errors=True)))
    deadline = time.monotonic() + 120
    while not os.path.exists(_server["path"]):
        if _server["proc"].poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the warm distrain server did not start:\n" + Path(_server["log"]).read_text())
        time.sleep(0.05)
    return _server["path"]


class Process:
    """What subprocess.Popen([python, -m, launch, *argv], ...) returns, for a command forked by the server:
    pid, poll, wait, send_signal, terminate, kill, returncode (-N: ended by signal N) and stdout for a pipe.
    stdout, stderr: open files (None: /dev/null; stderr with stdout; a pipe for stdout with pipe_stdout).
    netns: a network namespace to run in (`ip netns exec NAME`)."""

    def __init__(self, argv: list[str], cwd, env: dict, stdout=None, stderr=None, pipe_stdout: bool = False,
                 new_session: bool = False, netns: str | None = None):
        self.args = [sys.executable, "-m", "launch", *argv]
        self.returncode, self.stdout = None, None
        with open(os.devnull, "r+") as nothing:
            out = stdout or nothing
            if pipe_stdout:
                read, write = os.pipe()
                out, self.stdout = os.fdopen(write, "w"), os.fdopen(read, "r")
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self._conn.connect(_socket_path())
            request = {"argv": argv, "cwd": str(cwd or os.getcwd()), "env": env, "new_session": new_session,
                       "netns": netns}
            socket.send_fds(self._conn, [json.dumps(request).encode()],
                            [nothing.fileno(), out.fileno(), (stderr or out).fileno()])
            if pipe_stdout:
                out.close()  # the command holds the pipe's only writing end: its end is the reader's EOF
        self.pid = int(self._conn.recv(64))

    def poll(self) -> int | None:
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._ended(self._conn.recv(64))
            except BlockingIOError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                self._ended(self._conn.recv(64))
            except socket.timeout:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, None]:
        out = self.stdout.read() if self.stdout else None
        self.wait(timeout)
        return out, None

    def _ended(self, message: bytes) -> None:
        self.returncode = int(message)
        self._conn.close()

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def run(argv: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """What subprocess.run([python, -m, launch, *argv], capture_output=True, text=True) returns."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = Process(argv, cwd, env, stdout=out, stderr=err)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())


if __name__ == "__main__":
    serve(sys.argv[1])
