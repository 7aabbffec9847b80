"""A new user's first hour: the same command finds the same run, a used run dir is never silently replaced
or mixed, the end of a run says what happened, and every mistake is one line (real runs, real files)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from conftest import TINY, WITH_WORKERS, assert_ok, distrain, metrics, one_line_error, small_tmpfs
from imagefolder import make_imagefolder

ONE_PROC = ["--gpus", "0", "--procs", "1", *TINY, *WITH_WORKERS]  # a user's run has loader workers


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's folder with data/ in it; runs land in its runs/ (no --run-dir anywhere)."""
    root = tmp_path_factory.mktemp("user")
    make_imagefolder(root / "data")
    return root


@pytest.fixture(scope="module")
def finished(workdir) -> tuple[Path, list[str]]:
    """One finished 1-epoch run in the default run dir, and the command that made it."""
    command = ["launch", "--data", "data", "--epochs", "1", *ONE_PROC]
    proc = distrain(*command, cwd=workdir)
    assert_ok(proc)
    run_dirs = [p for p in (workdir / "runs").iterdir() if p.is_dir()]  # (beside the HPARAMS experiment record)
    assert len(run_dirs) == 1, run_dirs
    assert "run finished" in proc.stdout and "best acc1" in proc.stdout and "best.pt" in proc.stdout
    assert "distrain eval --checkpoint" in proc.stdout
    return run_dirs[0], command


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_command_finds_the_run_and_more_epochs_continue_it(workdir, finished):
    run_dir, command = finished
    again = distrain(*command, cwd=workdir)
    assert_ok(again)
    assert "run complete" in again.stdout and "best acc1" in again.stdout
    more = distrain(*[a if a != "1" or command[i - 1] != "--epochs" else "2" for i, a in enumerate(command)],
                    cwd=workdir)
    assert_ok(more)
    assert "resuming at the end of epoch 1" in more.stdout
    assert [p for p in (workdir / "runs").iterdir() if p.is_dir()] == [run_dir]  # the same run dir, not a new one
    assert [r["epoch"] for r in metrics(run_dir)] == [0, 1]  # epoch 0 not trained twice
    first = distrain(*command, cwd=workdir)  # the 1-epoch command once more: it says what the run holds now
    assert_ok(first)
    assert "has trained 2 epochs, more than the 1 asked for" in first.stdout and "--epochs 3 or more" in first.stdout


def test_changed_training_math_is_refused_with_each_difference(workdir, finished):
    run_dir, command = finished
    before = sha(run_dir / "checkpoints" / "best.pt")
    proc = distrain(*command, "--run-dir", run_dir, "--lr", "0.3", "--image-size", "48", cwd=workdir)
    assert proc.returncode == 2, proc.all
    assert "--lr 0.3 (recorded: 0.2)" in proc.stderr and "--image-size 48 (recorded: 32)" in proc.stderr
    assert "--run-dir" in proc.stderr and "--overwrite" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.all
    assert sha(run_dir / "checkpoints" / "best.pt") == before


def test_resume_never_into_a_used_run_dir_loses_nothing_and_overwrite_replaces_all(workdir, finished, tmp_path):
    run_dir, command = finished
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = sha(copy / "checkpoints" / "best.pt")
    proc = distrain(*command, "--run-dir", copy, "--resume", "never", cwd=workdir)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr, proc.all
    assert sha(copy / "checkpoints" / "best.pt") == before
    old_events = {p for p in (copy / "tb").rglob("events.out.tfevents.*")}
    assert old_events
    proc = distrain(*command, "--run-dir", copy, "--resume", "never", "--overwrite", "--seed", "1", cwd=workdir)
    assert_ok(proc)
    assert [r["epoch"] for r in metrics(copy)] == [0]  # one run's rows only
    assert not old_events & set((copy / "tb").rglob("events.out.tfevents.*")), "old TensorBoard events remain"


def test_status_says_finished_and_refuses_a_folder_that_is_not_a_run(workdir, finished):
    run_dir, _ = finished
    proc = distrain("status", run_dir, cwd=workdir)
    assert_ok(proc)
    assert "finished" in proc.stdout and "epoch" in proc.stdout and " of " in proc.stdout
    proc = distrain("status", workdir / "data", cwd=workdir)
    assert proc.returncode == 2 and "not a distrain run dir" in proc.stderr, proc.all


def test_eval_uses_the_checkpoints_preprocessing_and_matches_training(workdir, finished):
    run_dir, _ = finished
    proc = distrain("eval", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--data", "data", "--json",
                    cwd=workdir)
    assert_ok(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    row = max(metrics(run_dir), key=lambda r: r["val_acc1"])
    assert (result["acc1"], result["acc5"]) == (row["val_acc1"], row["val_acc5"])
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-6)
    proc = distrain("eval", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--data", "data",
                    "--image-size", "40", cwd=workdir)
    assert_ok(proc)
    assert "--image-size 40 differs from the checkpoint's crop size 32" in proc.stderr




def test_checkpoint_mistakes_in_eval_are_one_line(workdir, finished, tmp_path):
    import pickle

    import torch

    best = run_dir_best = finished[0] / "checkpoints" / "best.pt"
    ckpt = torch.load(run_dir_best, weights_only=True)
    plain = tmp_path / "plain.pt"
    torch.save(ckpt["model"], plain)
    assert "bare weights file" in one_line_error(distrain("eval", "--checkpoint", plain, "--data", "data",
                                                          cwd=workdir, fresh=True))
    other = make_imagefolder(tmp_path / "other", classes=3)
    line = one_line_error(distrain("eval", "--checkpoint", best, "--data", other, cwd=workdir))
    assert "trained on 4" in line and "--resume" not in line
    # Class folders without val/ (scored through a view of them): the message names the folder the user gave
    line = one_line_error(distrain("eval", "--checkpoint", best, "--data", other / "train", cwd=workdir))
    assert line.startswith(f"error: {other / 'train'} has 3 class folders; {best} was trained on 4 others"), line
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as fh:
        pickle.dump({"model": Exception("x"), "arch": "resnet18"}, fh)
    for procs in ("1", "2"):
        line = one_line_error(distrain("eval", "--checkpoint", evil, "--data", "data", "--gpus", "0",
                                       "--procs", procs, cwd=workdir))
        assert "refusing" in line and "weights_only=False" not in line
    line = one_line_error(distrain("eval", "--checkpoint", best, "--data", "data", "--gpus", "2", cwd=workdir))
    assert "--gpus 2 asked for, but 0 visible" in line


@pytest.mark.parametrize("args,expected", [
    (["launch", "--data", "data", "--config", "data"], "is a directory"),
    (["train", "--data", "data", "--device", "cuda", "--run-dir", "NEVER"], "no CUDA GPU"),
    (["launch", "--data", "data", "--gpus", "0", "--amp", "fp16", "--run-dir", "NEVER"], "--amp fp16 needs a CUDA"),
    (["launch", "--data", "data", "--gpus", "0", "--strategy", "dp", "--procs", "2", "--run-dir", "NEVER"],
     "--strategy dp runs one process"),
    (["launch", "--data", "data", "--gpus", "0", "--procs", "2", "--batch-size", "64", "--run-dir", "NEVER"],
     "use --batch-size 48 or less"),
])
def test_bad_input_is_one_line_before_anything_starts(workdir, args, expected):
    line = one_line_error(distrain(*args, cwd=workdir, fresh=True))  # a new interpreter: its imports print nothing
    assert expected in line
    assert not (workdir / "NEVER").exists(), "nothing is left behind"


def test_version():
    proc = distrain("--version")
    assert_ok(proc)
    assert proc.stdout.startswith("distrain ") and "torch" in proc.stdout


def test_a_rank_failure_reaches_the_user_as_its_own_line(workdir, tmp_path):
    """What only a rank can find (here: the disk fills up when rank 0 saves its first checkpoint) is that
    rank's one line naming the rank and where its traceback is; torchrun's dump goes to RUN_DIR/logs/."""
    with small_tmpfs(tmp_path / "small", "1m") as small:
        run_dir = small / "run"
        proc = distrain("launch", "--data", "data", "--epochs", "1", "--run-dir", run_dir, "--gpus", "0",
                        "--procs", "2", *TINY, cwd=workdir)
        assert proc.returncode == 1, proc.all
        assert "Traceback" not in proc.all and "ChildFailedError" not in proc.all, proc.all
        failed = [line for line in proc.all.splitlines() if "run failed" in line]
        assert len(failed) == 1 and "disk full while saving" in failed[0] and "rank 0 on" in failed[0], proc.all
        assert "traceback.rank0.txt" in failed[0] and (run_dir / "logs" / "traceback.rank0.txt").exists()
        status = distrain("status", run_dir, cwd=workdir)
        assert "failed" in status.stdout and "disk full" in status.stdout, status.all
