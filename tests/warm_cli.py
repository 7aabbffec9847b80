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
          ["distrib.train", "torch._dynamo"]  # (torch and torchvision come with distrib.train; DDP imports _dynamo)
MESSAGE = 1 << 20


# --- the server (its own process, one thread: it forks)

def _command(request: dict, fds: list[int]) -> None:
    """In the forked child: become `python -m launch ARGV` in the request's folder and environment."""
    for target, fd in enumerate(fds):  # stdin, stdout, stderr
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # TMPDIR is read again, as a new process would
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sys.argv = [str(Path(sys.modules["launch"].__file__).with_name("__main__.py")), *request["argv"]]
    sys.path[0] = os.getcwd()  # `python -m` puts the current folder first
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


def serve(path: str) -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)

    parent = os.getppid()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the client waits for this name: bound and listening
    server.listen(4)
    server.settimeout(2)
    while os.getppid() == parent:  # ends with its xdist worker
        try:
            conn, _ = server.accept()
        except socket.timeout:
            continue
        with conn:
            message, fds, _, _ = socket.recv_fds(conn, MESSAGE, 3)
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                _command(json.loads(message), fds)
            for fd in fds:
                os.close(fd)
            conn.send(str(pid).encode())
            _, status = os.waitpid(pid, 0)
            conn.send(str(os.waitstatus_to_exitcode(status)).encode())


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


def run(argv: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """What subprocess.run([python, -m, launch, *argv], capture_output=True, text=True) returns."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            open(os.devnull) as nothing, socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.connect(_socket_path())
        request = {"argv": argv, "cwd": str(cwd or os.getcwd()), "env": env}
        socket.send_fds(conn, [json.dumps(request).encode()], [nothing.fileno(), out.fileno(), err.fileno()])
        pid = int(conn.recv(64))
        conn.settimeout(timeout)
        try:
            code = int(conn.recv(64))
        except socket.timeout:
            os.kill(pid, signal.SIGKILL)
            conn.settimeout(None)
            conn.recv(64)
            raise subprocess.TimeoutExpired([sys.executable, "-m", "launch", *argv], timeout) from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess([sys.executable, "-m", "launch", *argv], code, out.read(), err.read())


if __name__ == "__main__":
    serve(sys.argv[1])
