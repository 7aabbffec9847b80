"""benchmarks/gpu_check.py: its every step runs here on the CPU, so the GPU check cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import start_distrain

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_check import Check, Step, run_all  # noqa: E402

CUDA_ONLY = {"bench_compile", "bench_fp16"}


def _forked_from_the_warm_server(argv, *, cwd, env, stdout, stderr, stdin=None, start_new_session=False):
    """subprocess.Popen for gpu_check's steps: a `python -m launch ARGS` step is started by the tests'
    start_distrain (forked from the warm server: launch.cli.main in its own session, with the step's folder,
    environment and output files), not a new interpreter importing torch again (~5 CPU-s a step). The Python
    probe (`-c`) starts as before. Starting real processes, timing them out and ending their trees is proven
    by the next-but-one test, with real interpreters."""
    if argv[1:3] != ["-m", "launch"]:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, stdin=stdin,
                                start_new_session=start_new_session)
    return start_distrain(*argv[3:], cwd=cwd, env=env, stdout=stdout, stderr=stderr, new_session=start_new_session)


def test_the_whole_check_passes_on_the_cpu(tmp_path, monkeypatch, capsys):
    out = tmp_path / "check.json"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cpu", "--out", str(out),
                                      "--work", str(tmp_path / "work")])
    monkeypatch.setattr(gpu_check, "subprocess", SimpleNamespace(
        Popen=_forked_from_the_warm_server, TimeoutExpired=subprocess.TimeoutExpired, DEVNULL=subprocess.DEVNULL))
    code = gpu_check.main()
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == [s.name for s in gpu_check.STEPS]  # every step, in order
    failed = {name: s.get("error", "") + "\n" + s.get("output_tail", "") for name, s in steps.items()
              if s["status"] not in ("passed", "skipped: needs CUDA")}
    assert not failed, failed
    assert {name for name, s in steps.items() if s["status"] == "skipped: needs CUDA"} == CUDA_ONLY
    assert code == 0 and report["passed"], printed
    assert report["torch"] and report["date"] and report["device"] == "cpu"
    # What each step proves, from its figures (the table prints them).
    assert steps["bench_eager"]["figures"]["images_per_sec"] > 0
    assert steps["bench_decode"]["figures"]["loader_images_per_sec"] > 0
    assert steps["train_resume"]["figures"]["epoch"] == 1  # the second run continued the first
    assert steps["eval"]["figures"]["samples"] == gpu_check.SIZES["cpu"]["val"]
    assert "all steps passed" in printed and "bench_compile  skipped: needs CUDA" in printed


def test_the_gpu_budgets_fit_in_eight_minutes():
    assert gpu_check.TOTAL_BUDGET_S <= 470, "the per-step limits must add up to under 8 minutes"


def test_a_failing_or_hanging_step_does_not_stop_the_rest(tmp_path):
    """Real processes: a step that fails, one that hangs (with a child of its own), then one that works."""
    pid_file = tmp_path / "grandchild.pid"
    # Its child runs in a session of its own, as torchrun does under `distrain launch`.
    hang = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)'], start_new_session=True); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
            f"time.sleep(60)")
    steps = [
        Step("env", 5, lambda c: ["-c", "print(42)"], lambda c, rec: {"said": rec["stdout"].strip()}),
        Step("fails", 5, lambda c: ["-c", "import sys; sys.exit(3)"], lambda c, rec: {}),
        Step("hangs", 2, lambda c: ["-c", hang], lambda c, rec: {}),
        Step("after", 30, lambda c: ["-c", "print('still here')"], lambda c, rec: {"said": rec["stdout"].strip()}),
    ]
    check = Check("cuda", tmp_path)  # the GPU's budgets; nothing here needs a GPU
    started = time.monotonic()
    original, gpu_check.STEPS = gpu_check.STEPS, steps
    try:
        records = run_all(check, None)
    finally:
        gpu_check.STEPS = original
    status = {r["step"]: r for r in records}
    assert status["env"]["figures"] == {"said": "42"}
    assert status["fails"]["status"] == "failed" and status["fails"]["error"] == "exit code 3"
    assert status["hangs"]["status"] == "failed" and status["hangs"]["error"].startswith("timed out after")
    # Unused time passes on: "hangs" got its 2 s plus what env and fails left of theirs.
    assert status["hangs"]["limit_s"] > 2
    assert status["after"]["status"] == "passed" and status["after"]["figures"] == {"said": "still here"}
    assert time.monotonic() - started < 40  # not the 60 s the hanging step would take
    grandchild = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # the hanging step's own child was ended with it
        for _ in range(50):
            os.kill(grandchild, 0)
            time.sleep(0.1)
