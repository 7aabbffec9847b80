"""`distrain bench`: real runs of the real command, small enough for two CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from distrib.bench import describe, run
from distrib.config import ConfigError
from imagefolder import make_imagefolder

SMALL = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--steps", "3", "--device", "cpu"]


def bench(*args) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "launch", "bench", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def bench_json(*args) -> dict:
    proc = bench(*args, "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one line, got:\n{proc.stdout}"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("bench") / "data")


def test_synthetic_measures_the_model_step():
    result = bench_json("--synthetic", *SMALL)
    assert result["mode"] == "synthetic" and result["device"] == "cpu" and result["arch"] == "resnet18"
    assert result["images_per_sec"] > 0 and result["images_per_sec"] == result["model_images_per_sec"]
    assert result["step_time_ms"] > 0 and result["peak_memory_mb"] > 0
    assert result["amp"] == "off" and result["channels_last"] is False  # fp32 on the CPU
    # images/s is the batch over the median step: the two figures must agree.
    assert result["images_per_sec"] == pytest.approx(8 / (result["step_time_ms"] / 1000), rel=0.01)


def test_loader_only_reads_the_real_files(data):
    result = bench_json("--loader-only", "--data", data, "--workers", "1", *SMALL)
    assert result["mode"] == "loader" and result["images_per_sec"] > 0
    assert "model_images_per_sec" not in result  # no model was built
    assert result["train_images"] == 96 and result["classes"] == 4 and result["skipped_images"] == 0


def test_both_names_the_bound(data):
    result = bench_json("--data", data, "--workers", "1", *SMALL)
    loader, model = result["loader_images_per_sec"], result["model_images_per_sec"]
    assert result["mode"] == "both" and result["bound"] == ("input" if loader < model else "compute")
    assert result["images_per_sec"] == min(loader, model) > 0
    assert result["classes"] == 4  # the model step is measured with the data's head
    text = describe(result)  # what the command prints without --json
    if result["bound"] == "input":
        assert f"input-bound: the loader gives {loader:.1f} img/s, the model takes {model:.1f} img/s" in text
    else:
        assert f"compute-bound: the model takes {model:.1f} img/s, the loader gives {loader:.1f} img/s" in text
    swapped = {**result, "bound": "input", "loader_images_per_sec": 1.0, "model_images_per_sec": 2.0}
    assert "input-bound: the loader gives 1.0 img/s, the model takes 2.0 img/s" in describe(swapped)


@pytest.mark.parametrize("args, message", [
    ((), "--data DIR"),
    (("--data", "/no/such/dir"), "/no/such/dir"),
    (("--loader-only", "--synthetic"), "--loader-only"),
    (("--synthetic", "--device", "tpu"), "--device"),
    (("--synthetic", "--steps", "0"), "--steps 0"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = bench(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_data_that_is_not_an_imagefolder_is_bad_input(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ConfigError, match="has no class folders"):
        run(data=str(tmp_path), synthetic=False, loader_only=True, arch="resnet18", image_size=32, batch_size=8,
            workers=0, device="cpu", steps=1)
