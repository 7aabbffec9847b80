"""The seams between features, through the CLI as a user types it, on a dataset laid out as people download
it: class folders at the root, mixed extensions, a class name with a space and a non-ASCII letter, one
broken file (tests/imagefolder.py make_downloaded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_ok, distrain, metrics
from imagefolder import make_downloaded, make_imagefolder

SMALL = ["--gpus", "0", "--arch", "resnet18", "--image-size", "32", "--batch-size", "16", "--workers", "1",
         "--seed", "0", "--lr", "0.2"]


def one_line_error(proc, code: int = 2) -> str:
    assert proc.returncode == code, proc.all
    assert "Traceback" not in proc.all, proc.all
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.all
    return lines[0]


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory) -> Path:
    return make_downloaded(tmp_path_factory.mktemp("dl") / "my photos")


@pytest.fixture(scope="module")
def trained(downloaded, tmp_path_factory) -> Path:
    """A 2-epoch run on class folders at the root, 20% held out."""
    run_dir = tmp_path_factory.mktemp("runs") / "root-layout"
    proc = distrain("launch", *SMALL, "--data", downloaded, "--val-split", "0.2", "--epochs", "2",
                    "--run-dir", run_dir)
    assert_ok(proc)
    assert "img 001.JPEG" in proc.all  # the broken file is named, and skipped
    return run_dir


def test_class_folders_at_the_root_need_val_split_and_say_so(downloaded, tmp_path):
    line = one_line_error(distrain("launch", *SMALL, "--data", downloaded, "--run-dir", tmp_path / "r"))
    assert "holds class folders but no train/ and val/" in line and "--val-split 0.1" in line
    check = distrain("check", *SMALL, "--data", downloaded, env={"COLUMNS": "200"})
    assert check.returncode == 1
    row = next(line for line in check.stdout.splitlines() if "│ data" in line)
    assert row.split("│")[4].strip().startswith("pass --val-split 0.1")  # the fix column names the fix


def test_class_folders_at_the_root_train_and_validate_on_the_held_out_share(trained):
    rows = metrics(trained)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[-1]["val_samples"] == 24  # 20% of each class of 30 (the broken one is in train or val)
    assert rows[-1]["val_acc1"] > 25


def test_eval_scores_the_held_out_images_of_its_own_data(trained, downloaded):
    proc = distrain("eval", "--checkpoint", trained / "checkpoints" / "best.pt", "--data", downloaded, "--json")
    assert_ok(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    best = max(metrics(trained), key=lambda r: r["val_acc1"])
    assert (result["acc1"], result["samples"]) == (best["val_acc1"], best["val_samples"])
    assert "held out by --val-split 0.2" in proc.stderr


def test_eval_scores_every_image_of_other_class_folders_and_counts_the_unreadable(trained, tmp_path):
    other = make_downloaded(tmp_path / "other", per_class=10, seed=7)
    proc = distrain("eval", "--checkpoint", trained / "checkpoints" / "best.pt", "--data", other, "--json")
    assert_ok(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (result["samples"], result["skipped"]) == (39, 1)  # 4 x 10 images, one of them broken
    assert f"every image of {other}" in proc.stderr and "skipped 1 unreadable" in proc.stderr


def test_eval_scores_the_val_folder_of_other_data(trained, tmp_path):
    """Trained with --val-split; other data with val/: its val/ is scored (no 'drop --val-split')."""
    other = make_imagefolder(tmp_path / "other", classes=4, train_per_class=2, val_per_class=3, val_extra=0)
    for i, name in enumerate(["café crème", "dog", "fish", "zebra"]):
        for split in ("train", "val"):
            os.rename(other / split / f"class{i}", other / split / name)
    proc = distrain("eval", "--checkpoint", trained / "checkpoints" / "best.pt", "--data", other, "--json")
    assert_ok(proc)
    assert json.loads(proc.stdout.strip().splitlines()[-1])["samples"] == 12
    assert f"scoring {other / 'val'}" in proc.stderr


@pytest.mark.parametrize("kind,expected", [("png", "it is a PNG image"), ("txt", "it is text")])
def test_a_file_that_is_no_checkpoint_is_named_as_such(downloaded, tmp_path, kind, expected):
    path = next((downloaded / "fish").glob("*.png")) if kind == "png" else tmp_path / "notes.txt"
    if kind == "txt":
        path.write_text("my notes\n")
    for args in (["eval", "--checkpoint", path, "--data", downloaded],
                 ["launch", *SMALL, "--data", downloaded, "--val-split", "0.2", "--weights", path,
                  "--run-dir", tmp_path / "r"]):
        line = one_line_error(distrain(*args))
        assert "is not a checkpoint or weights file" in line and expected in line and "unpickle" not in line


def test_overwrite_removes_everything_the_run_made_and_the_export_command_works_again(downloaded, tmp_path):
    run_dir = tmp_path / "r"
    common = [*SMALL, "--data", downloaded, "--val-split", "0.2", "--epochs", "1", "--run-dir", run_dir,
              "--steps-per-epoch", "2"]
    assert_ok(distrain("launch", *common))
    export = ["export", "--checkpoint", run_dir / "checkpoints" / "best.pt", "--format", "safetensors",
              "--output", run_dir / "export"]
    assert_ok(distrain(*export))
    old = json.loads((run_dir / "export" / "model.json").read_text())["source"]["sha256"]
    again = distrain("launch", *common, "--lr", "0.05", "--overwrite")
    assert_ok(again)
    assert "--overwrite: removed" in again.stdout and "export/" in again.stdout
    assert not (run_dir / "export").exists()
    assert_ok(distrain(*export))  # the run's own printed export command
    assert json.loads((run_dir / "export" / "model.json").read_text())["source"]["sha256"] != old
    replaced = distrain(*export)  # the same checkpoint again: the stale export is replaced
    assert_ok(replaced)
    assert "replacing" in replaced.stdout
    other = distrain("export", "--checkpoint", run_dir / "checkpoints" / "last.pt", "--format", "safetensors",
                     "--output", run_dir / "export")
    assert "holds an export of" in one_line_error(other)


def test_ctrl_c_twice_stops_at_once_as_a_stop_and_the_same_command_resumes(downloaded, tmp_path):
    run_dir = tmp_path / "r"
    args = [sys.executable, "-m", "launch", "launch", *map(str, SMALL), "--procs", "2", "--data", str(downloaded),
            "--val-split", "0.2", "--epochs", "6", "--batch-size", "8", "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # at least one whole checkpoint, then Ctrl-C twice, as people press it
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "stopped at once by a second SIGINT" in out and "Resume with the same command" in out, out
    assert "run failed" not in out
    assert json.loads((run_dir / "outcome.json").read_text())["state"] == "stopped"
    status = distrain("status", run_dir)
    assert "stopped" in status.stdout
    resumed = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # the very same command
    try:
        for line in resumed.stdout:
            if "resuming at epoch" in line or "Traceback" in line:
                break
        assert "resuming at epoch" in line, line
    finally:
        os.killpg(resumed.pid, signal.SIGKILL)
        resumed.wait()
