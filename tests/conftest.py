"""Shared fixtures: small real ImageFolders on disk and a way to run the real `distrain` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from imagefolder import make_imagefolder  # noqa: E402

# Small enough for 2 CPU cores, big enough to learn: 4 classes, 96 train and 29 val images of 32 px.
TINY = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "16", "--workers", "1", "--lr", "0.2",
        "--seed", "0", "--log-interval", "2"]


@pytest.fixture(scope="session")
def imagefolder(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "imagefolder")


def distrain(*args: str, cwd=None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `distrain` command for real; output is captured and echoed on failure."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "launch", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    proc.all = proc.stdout + proc.stderr
    return proc


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.all[-6000:]}"
