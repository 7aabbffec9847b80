"""`distrain tensorboard` starts the real TensorBoard, on loopback, serving the run's scalars over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from types import SimpleNamespace

from conftest import distrain


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(folder, *options: str, host: str = "127.0.0.1"):
    """The real `distrain tensorboard FOLDER --port P [options]`, as a user starts it. Yields .base (its URL)
    and .port; after the block, .out holds what it printed."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "launch", "tensorboard", str(folder), "--port", str(port),
                             *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    server = SimpleNamespace(base=f"http://{host}:{port}", port=port, out="")
    try:
        yield server
    finally:
        proc.terminate()
        server.out = proc.communicate(timeout=30)[0]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_serves_the_runs_scalars_on_loopback(two_rank_run):
    with served(two_rank_run.parent) as server:
        run = f"{two_rank_run.name}/tb"  # TensorBoard names a run by its folder under the logdir
        tags, deadline = {}, time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                tags = get_json(f"{server.base}/data/plugin/scalars/tags")
                if run in tags:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        run_tags = tags.get(run, {})
        assert {"train/loss", "train/lr", "train/images_per_sec", "val/acc1", "val/acc5", "val/loss"} <= set(run_tags)
        points = get_json(f"{server.base}/data/plugin/scalars/scalars?tag=val/acc1&run={run}")
        assert [step for _, step, _ in points] == [0, 1]
        # bound to loopback only: ss shows the listening address
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True).stdout
        local_addresses = [line.split()[3] for line in listening.splitlines()]
        assert local_addresses == [f"127.0.0.1:{server.port}"], listening
    assert f"http://127.0.0.1:{server.port}/" in server.out
    # A SLURM login node (sbatch here, outside a job, as on this cluster's machine) gets the laptop's tunnel.
    tunnel = f"from your laptop: ssh -N -L {server.port}:127.0.0.1:{server.port} "
    assert (tunnel in server.out) == (shutil.which("sbatch") is not None and "SLURM_JOB_ID" not in os.environ), \
        server.out


def test_tensorboard_refuses_a_missing_runs_dir(tmp_path):
    proc = distrain("tensorboard", tmp_path / "nope")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = distrain("tensorboard", cwd=tmp_path)  # no RUNS_DIR: ./runs, not here
    assert proc.returncode == 2 and "runs dir runs does not exist" in proc.stderr, proc.all
