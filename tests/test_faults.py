"""Faults and hostile input, each with a real process: stops, kills, full disks, hung ranks, evil pickles."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, WITH_WORKERS, assert_ok, distrain, metrics, rank_pids, small_tmpfs, start_distrain

VAL_IMAGES = 29


def start(*args, log: Path, reader: bool = False):
    """`distrain ARGS` in its own session, its output in log (only its stderr when a reader takes stdout)."""
    if reader:
        return start_distrain(*args, pipe_stdout=True, stderr=log.open("w"), new_session=True)
    return start_distrain(*args, stdout=log.open("w"), new_session=True)


def wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        assert proc is None or proc.poll() is None, "the run ended early"
        time.sleep(0.1)


def test_stop_mid_epoch_resumes_at_the_same_step(two_rank_run, imagefolder, tmp_path):
    """A STOP file (what SLURM's USR1 and Ctrl-C become) present from the start: every rank stops after
    step 1 of epoch 0. The relaunch continues at step 2 and ends with the very numbers of an
    uninterrupted run: no step redone, none skipped."""
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    (run_dir / "STOP").touch()
    options = ["--data", imagefolder, "--epochs", "2", "--run-dir", run_dir, *TINY]
    first = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "launch", "train", "--device", "cpu", *map(str, options)],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stdout + first.stderr  # a clean stop is no failure for torchrun
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 1, 1)
    assert metrics(run_dir) == []
    proc = distrain("launch", "--gpus", "0", "--procs", "2", *options)  # clears the stale STOP, resumes
    assert_ok(proc)
    assert "resuming at epoch 1, step 1" in proc.stdout
    resumed, straight = metrics(run_dir), metrics(two_rank_run)
    assert [r["epoch"] for r in resumed] == [0, 1]
    for a, b in zip(resumed, straight):
        for key in ("train_loss", "val_loss", "val_acc1", "val_acc5", "val_samples"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), (key, a, b)
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 6


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm-after-the-reader-left"])
def test_ctrl_c_stops_cleanly_and_relaunch_resumes(imagefolder, tmp_path, how):
    """Ctrl-C: the terminal's SIGINT to the launcher's process group. SIGTERM as `timeout 600 distrain launch
    ... | grep -m1 torchrun` sends it: grep has read its line and gone, so the launcher's stdout is a closed
    pipe; its messages go nowhere, and it still stops the ranks and records the run as stopped."""
    run_dir, log = tmp_path / "run", tmp_path / "launch.log"
    args = ["launch", "--gpus", "0", "--procs", "2", "--data", imagefolder, "--epochs", "3", "--run-dir",
            run_dir, *TINY]
    reader_leaves = how != "ctrl-c"
    proc = start(*args, log=log, reader=reader_leaves)
    if reader_leaves:
        assert proc.stdout.readline()  # the reader's one line, then it is gone
        proc.stdout.close()
    wait_for(lambda: metrics(run_dir), 240, proc)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does: the launcher's whole process group
    else:
        proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    text = log.read_text()
    assert code == (130 if how == "ctrl-c" else 143), text
    assert "Traceback" not in text and "BrokenPipe" not in text, text
    if reader_leaves:
        assert json.loads((run_dir / "outcome.json").read_text())["state"] == "stopped", text
    else:
        assert "stopped" in text and "Resume with the same command" in text
        assert "--run-dir " + str(run_dir) in text.split("Resume with the same command")[1]
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    done_before = len(metrics(run_dir))
    assert ckpt["epoch"] * 3 + ckpt["batch"] == ckpt["step"]  # a consistent step boundary
    again = distrain(*args)
    assert_ok(again)
    assert [r["epoch"] for r in metrics(run_dir)] == [0, 1, 2], (done_before, metrics(run_dir))
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 9  # no step lost


def test_sigterm_to_torchrun_and_its_ranks_together_ends_them_at_a_step_without_sigkill(imagefolder, tmp_path):
    """What scancel does to a job step: SIGTERM to torchrun's agent and its ranks at once. The ranks (forked
    from the agent, distrib/agent.py) stop at a step boundary, write last.pt and leave by themselves while the
    agent shuts down: torchrun never needs its SIGKILL, 30 s later."""
    run_dir, log = tmp_path / "run", tmp_path / "launch.log"
    proc = start("launch", "--gpus", "0", "--procs", "2", "--data", imagefolder, "--epochs", "20", "--run-dir",
                 run_dir, *TINY, log=log)
    wait_for(lambda: metrics(run_dir) and len(rank_pids(run_dir / "config.toml")) == 2, 240, proc)
    ranks = rank_pids(run_dir / "config.toml")
    agent = int(Path(f"/proc/{ranks[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert os.getpgid(ranks[0]) == os.getpgid(ranks[1]) == os.getpgid(agent)
    os.killpg(os.getpgid(agent), signal.SIGTERM)
    proc.wait(timeout=120)
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] * 3 + ckpt["batch"] == ckpt["step"] >= 3  # a step boundary, after epoch 0
    agent_log = (run_dir / "logs" / "torchrun.err").read_text()
    assert "Closing process" in agent_log and "forcefully exiting" not in agent_log, agent_log[-3000:]
    assert re.search(r"stopped (at|after) epoch", (run_dir / "logs" / "rank0.log").read_text())


def test_kill_during_checkpoint_write_keeps_the_previous_one(tmp_path):
    """kill -9 while a large checkpoint is being written: last.pt still holds the previous state."""
    target = tmp_path / "checkpoints" / "last.pt"
    writer = textwrap.dedent(f"""
        import sys, torch
        from distrib.checkpoint import save_atomic
        save_atomic({{"epoch": 1, "model": {{"w": torch.ones(4)}}}}, {str(target)!r})
        print("first", flush=True)
        sys.stdin.readline()
        save_atomic({{"epoch": 2, "model": {{"w": torch.zeros(64, 1024, 1024)}}}}, {str(target)!r})  # 256 MB
        print("second", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "first"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    wait_for(lambda: any(p.name.startswith(".last.pt.tmp") and p.stat().st_size > 0
                         for p in target.parent.iterdir()), 60, proc)
    proc.kill()
    proc.wait()
    ckpt = torch.load(target, weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["model"]["w"].tolist() == [1.0] * 4


@pytest.fixture
def small_filesystem(tmp_path):
    with small_tmpfs(tmp_path / "small", "2m") as mount:
        yield mount


def test_full_disk_while_saving(small_filesystem):
    from distrib.checkpoint import CheckpointError, save_atomic

    target = small_filesystem / "last.pt"
    save_atomic({"epoch": 1, "model": {"w": torch.ones(16)}}, str(target))
    with pytest.raises(CheckpointError, match="disk full while saving .*previous checkpoint is intact"):
        save_atomic({"epoch": 2, "model": {"w": torch.zeros(1024, 1024)}}, str(target))  # 4 MB > 2 MB
    assert torch.load(target, weights_only=True)["epoch"] == 1
    assert [p.name for p in small_filesystem.iterdir()] == ["last.pt"]  # the partial temp file is gone


def test_hung_rank_times_out_naming_it(imagefolder, tmp_path):
    """Rank 1 freezes (SIGSTOP, as if stuck in data loading): rank 0 fails after --dist-timeout naming it."""
    run_dir, log = tmp_path / "hung", tmp_path / "launch.log"
    proc = start("launch", "--gpus", "0", "--procs", "2", "--data", imagefolder, "--epochs", "20",
                 "--dist-timeout", "5", "--run-dir", run_dir, *TINY, log=log)
    wait_for(lambda: metrics(run_dir) and 1 in rank_pids(run_dir / "config.toml"), 240, proc)
    victim = rank_pids(run_dir / "config.toml")[1]
    os.kill(victim, signal.SIGSTOP)
    rank0_log = run_dir / "logs" / "rank0.log"
    try:  # rank 0 names the hung rank in its own log first; then torchrun need not wait 30 s on the frozen one
        wait_for(lambda: "is hung" in rank0_log.read_text(), 120)
        os.kill(victim, signal.SIGKILL)
        code = proc.wait(timeout=120)
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "rank 1 (at step" in text and "is hung" in text, text[-3000:]
    assert "--dist-timeout" in text
    # rank 0's Flight Recorder trace, read with torch's own reader as the README says (the frozen rank wrote none)
    traces = run_dir / "logs" / "hang" / "flight-recorder-attempt0"
    assert "hang evidence:" in text and str(traces) in text
    read = subprocess.run([sys.executable, "-m", "torch.distributed.flight_recorder.fr_trace", "-j",
                           "--allow-incomplete-ranks", str(traces)], capture_output=True, text=True, timeout=120)
    assert read.returncode == 0 and "Traceback" not in read.stderr, read.stdout[-2000:] + read.stderr[-2000:]
    shown = read.stdout + read.stderr  # fr_trace prints through logging
    entries = [line for line in shown.splitlines() if "state=" in line]
    assert "Rank 0" in shown and "Rank 1" not in shown and entries, shown[-2000:]
    assert any(e.startswith("all_reduce(") for e in entries), entries  # DDP's gradient all-reduces


def test_malicious_checkpoint_is_refused(imagefolder, tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    evil = tmp_path / "evil.pt"
    with evil.open("wb") as fh:
        pickle.dump({"model": Evil(), "arch": "resnet18"}, fh)
    for args in (["--resume", evil], ["--weights", evil]):
        proc = distrain("train", "--data", imagefolder, "--run-dir", tmp_path / "r", "--device", "cpu", *TINY,
                        "--epochs", "1", *args)
        assert proc.returncode in (1, 2), proc.all
        assert "refusing" in proc.all and "could run code" in proc.all
        assert not marker.exists()


def test_torchrun_line_quotes_every_value(tmp_path):
    """The dry run's command, pasted into a shell, passes a hostile run dir through as one literal word."""
    from distrib.config import RunConfig
    from launch.topology import make_plan
    from launch.torchrun import plan_argv

    weird = str(tmp_path / "a b'c\"$(touch PWNED);`touch PWNED2`\nx")
    cfg = RunConfig(synthetic=True, run_dir=weird, gpus=0, procs=2).validate()
    argv = plan_argv(make_plan(cfg, 0), cfg, "echo")
    out = subprocess.run(["bash", "-c", shlex.join(argv) + " > args.txt; printf '%s\\0' \"$@\" >/dev/null"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert os.path.join(weird, "config.toml") in (tmp_path / "args.txt").read_text()


@pytest.mark.parametrize("make, message", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "noval" / "train" / "a").mkdir(parents=True) or d / "noval", "no val/; pass --val-split 0.1"),
])
def test_bad_input_data_is_refused_before_anything_starts(tmp_path, make, message):
    data = make(tmp_path)
    proc = distrain("launch", "--gpus", "0", "--data", data, "--run-dir", tmp_path / "run")
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.all
    assert not (tmp_path / "run" / "config.toml").exists()


def test_bad_input_empty_class_and_different_classes(tmp_path):
    from imagefolder import make_imagefolder

    data = make_imagefolder(tmp_path / "d", classes=2, train_per_class=2, val_per_class=1)
    (data / "train" / "empty").mkdir()
    (data / "val" / "empty").mkdir()
    proc = distrain("launch", "--gpus", "0", "--data", data, "--run-dir", tmp_path / "r")
    assert proc.returncode == 2 and "train/empty is empty" in proc.stderr
    (data / "val" / "empty").rmdir()
    (data / "train" / "empty" / "x.jpg").write_bytes((data / "train" / "class0" / "0000.jpg").read_bytes())
    proc = distrain("launch", "--gpus", "0", "--data", data, "--run-dir", tmp_path / "r")
    assert proc.returncode == 2 and "different classes (only in train: empty" in proc.stderr


def test_bad_input_unwritable_run_dir_and_too_many_gpus(imagefolder, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = distrain("launch", "--gpus", "0", "--data", imagefolder, "--run-dir", blocker / "run")
    assert proc.returncode == 2 and "is not writable" in proc.stderr
    proc = distrain("launch", "--gpus", "4", "--data", imagefolder, "--run-dir", tmp_path / "r",
                    env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and "--gpus 4 asked for, but 0 visible here" in proc.stderr


def test_bad_input_slurm_options(tmp_path):
    for args, message in ((["--time", "1 day"], "--time"), (["--mem", "lots"], "--mem"),
                          (["--sbatch-arg", "nodes=3"], "--sbatch-arg")):
        proc = distrain("launch", "--slurm", "--synthetic", "--run-dir", tmp_path / "r", *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.all, proc.all
        assert len(proc.stderr.strip().splitlines()) == 1


def processes_with_env(marker: str) -> list[int]:
    """Live processes whose environment holds `marker` (a rank, its workers, their fork server)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/environ").read_bytes():
                if Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_loader_workers_end_when_their_rank_is_killed(imagefolder, tmp_path):
    """SIGKILL leaves a rank no chance to stop its data workers, and workers started by the fork server
    are not its children: they must notice on their own, and the fork server must go with them."""
    value = f"{os.getpid()}-{time.monotonic_ns()}"
    marker = f"DISTRAIN_TEST_MARK={value}"  # inherited by the rank, its fork server and their workers
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "DISTRAIN_TEST_MARK": value}
    rank = subprocess.Popen([sys.executable, "-m", "launch", "train", "--data", str(imagefolder), "--run-dir",
                             str(run_dir), "--epochs", "50", "--device", "cpu", *TINY, *WITH_WORKERS], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run_dir / "logs" / "rank0.log"
    wait_for(lambda: log.exists() and " step " in log.read_text(), timeout=120, proc=rank)
    assert len(processes_with_env(marker)) >= 3  # the rank, its fork server, its worker(s)
    rank.kill()
    rank.wait()
    deadline = time.monotonic() + 15
    while processes_with_env(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = processes_with_env(marker)
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running after the rank was killed: {left}"
