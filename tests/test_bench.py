"""`distrain bench`: real runs of the real command, small enough for two CPU cores."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import distrain
from imagefolder import make_imagefolder

from distrib.config import ConfigError
from distrib.tools.bench import describe, run
from distrib.tools.bench_loader import Ticker

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--steps", "3", "--seconds", "1",
         "--device", "cpu"]


def bench(*args) -> subprocess.CompletedProcess:
    return distrain("bench", *args)


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
    # A window of seconds, cut into parts: the figure is the median part, the parts are the spread.
    rates = result["loader_rates"]
    assert result["loader_seconds"] >= 1 and len(rates) >= 2
    assert result["loader_rate_min"] == min(rates) <= result["images_per_sec"] <= max(rates) == result["loader_rate_max"]
    assert result["loader_batches"] * 8 == result["loader_images"]


def test_loader_only_on_fewer_batches_than_it_takes(tmp_path):
    """40 images are 5 batches of 8: the bench goes on epoch after epoch with the same persistent workers
    (it used to shut them down after the first epoch, then fail with 'Queue ... is closed')."""
    data = make_imagefolder(tmp_path / "d40", classes=2, train_per_class=20, val_per_class=2)
    proc = bench("--loader-only", "--data", data, "--batch-size", "8", "--seconds", "2", "--device", "cpu")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert re.search(r"input pipeline: \d+\.\d img/s with \d worker", proc.stdout), proc.stdout
    assert "worker number" not in proc.stderr  # the default workers are capped by the cores: no PyTorch warning
    result = bench_json("--loader-only", "--data", data, "--batch-size", "8", "--seconds", "2", "--device", "cpu")
    assert result["loader_batches"] > 5  # more than one epoch
    assert result["workers"] == min(4, len(os.sched_getaffinity(0)))


def test_bench_agrees_with_loader_bench_and_with_itself(tmp_path):
    """Same files (500x375 photo-like JPEGs), same batch and workers: `distrain bench --loader-only` twice
    and benchmarks/loader_bench.py's distrain figure (median of whole passes), all three side by side so
    that each sees the same neighbours (this shared machine's speed moves up to 3x within a minute; run
    one after another, no bound of a few tens of percent survives). docs/performance.md §1c has the
    agreement measured one after another on a quiet spell."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from loader_bench import make_jpegs

    root = make_jpegs(tmp_path / "jpegs", (500, 375), 256)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "launch", "bench", "--loader-only", "--data", str(root), "--batch-size", "32",
            "--workers", "2", "--seconds", "5", "--device", "cpu", "--json"]
    done = tmp_path / "benches-done"  # loader_bench's passes go on until both benches have finished
    benches = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    time.sleep(3)  # loader_bench's runner starts fast (no CLI): its passes then fall mostly in the benches' time
    reference_proc = subprocess.Popen([sys.executable, "-c", LOADER_BENCH_PASSES, str(ROOT), str(root), str(done)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    exits = wait_all(benches)
    done.touch()
    outputs = [p.communicate(timeout=600) for p in (reference_proc, *benches)]
    assert all(p.returncode == 0 for p in (reference_proc, *benches)), outputs
    # loader_bench's passes that ended while both benches were timing: their 5 s windows end about a
    # second before they exit (workers shut down, the interpreter ends), when the passes speed up.
    passes = json.loads(outputs[0][0].strip().splitlines()[-1])
    window = [rate for end, rate in passes if min(exits) - 6 <= end <= min(exits) - 1]
    reference = statistics.median(window or [rate for _, rate in passes])
    first, second = (json.loads(out.strip().splitlines()[-1])["images_per_sec"] for out, _ in outputs[1:])
    print(f"side by side: loader_bench {reference:.1f} img/s ({len(window)} passes); bench {first:.1f} and "
          f"{second:.1f} img/s")
    # Loose bounds, against gross errors only (images counted as batches: 32x; no images; a window that is
    # not the window): on this 2-core machine, side by side with the other xdist worker's runs, loader_bench
    # read 0.88-3.4x a bench's figure and the two benches 0.80-1.37x each other; one after another on a
    # quiet spell the two figures agreed within 2 % (docs/performance.md §1c).
    assert 1 / 5 < first / reference < 5 and 1 / 5 < second / reference < 5
    assert 0.6 < first / second < 1.67


def wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[float]:
    """Wait for every process; the wall-clock time (time.time()) at which each one exited."""
    exits = [None] * len(procs)
    deadline = time.monotonic() + timeout
    while None in exits and time.monotonic() < deadline:
        for i, p in enumerate(procs):
            if exits[i] is None and p.poll() is not None:
                exits[i] = time.time()
        time.sleep(0.05)
    assert None not in exits, "a bench did not finish"
    return exits


# loader_bench.py's own distrain runner: one untimed pass, then whole passes until the file DONE exists
# (at least 3): [end time, rate] of each.
LOADER_BENCH_PASSES = """
import argparse, json, statistics, sys, time
sys.path.insert(0, sys.argv[1] + "/benchmarks")
import torch
from pathlib import Path
from loader_bench import distrain_runner
torch.set_num_threads(1)
run = distrain_runner(Path(sys.argv[2]), argparse.Namespace(batch_size=32, workers=2, image_size=224), False)
run(0)
passes, done = [], Path(sys.argv[3])
while not done.exists() or len(passes) < 3:
    start = time.perf_counter()
    images = run(len(passes) + 1)
    passes.append([time.time(), images / (time.perf_counter() - start)])
print(json.dumps(passes))
"""


def test_both_names_the_bound(data):
    result = bench_json("--data", data, "--workers", "1", *SMALL)
    loader, model = result["loader_images_per_sec"], result["model_images_per_sec"]
    assert result["mode"] == "both" and result["bound"] == ("input" if loader < model else "compute")
    assert result["images_per_sec"] == min(loader, model) > 0
    assert result["classes"] == 4  # the model step is measured with the data's head
    text = describe(result)  # what the command prints without --json
    assert (f"parts: min {result['loader_rate_min']:.1f}, max {result['loader_rate_max']:.1f}, window mean "
            f"{result['loader_images_per_sec_mean']:.1f} img/s") in text  # the spread, beside the figure
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
    (("--synthetic", "--seconds", "0"), "--seconds 0"),
    (("--synthetic", "--amp", "fp16", "--device", "cpu"), "--amp fp16 needs a CUDA GPU"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    proc = bench(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cuda_without_a_gpu_is_one_line_and_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = bench("--synthetic", "--device", "cuda")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: --device cuda: no CUDA GPU is visible to this process; use --device cpu or auto"]


def test_progress_lines_carry_an_eta():
    lines = []
    with Ticker(lines.append, every=0.05) as ticker:
        ticker.set("input pipeline: timed window of 10 s", seconds_left=10)
        time.sleep(0.3)
    assert lines and all(line.startswith("bench: input pipeline: timed window of 10 s, ") for line in lines)
    assert re.search(r"s so far, this part ends in about (9|10) s$", lines[0]), lines[0]
    late = []
    with Ticker(late.append, every=0.05) as ticker:  # an estimate that was short never reads "0 s" for long
        ticker.set("model step: 2 timed steps", seconds_left=0.01)
        time.sleep(0.3)
    assert all("ends in about 0 s" not in line for line in late) and "past its estimate" in late[-1], late


def test_data_that_is_not_an_imagefolder_is_bad_input(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ConfigError, match="has no class folders"):
        run(data=str(tmp_path), synthetic=False, loader_only=True, arch="resnet18", image_size=32, batch_size=8,
            workers=0, device="cpu", steps=1)
    with pytest.raises(ConfigError, match="--workers -1"):
        run(data=str(tmp_path), synthetic=False, loader_only=True, arch="resnet18", image_size=32, batch_size=8,
            workers=-1, device="cpu", steps=1)
