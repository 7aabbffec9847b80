"""The seams between features, through the CLI as a user types it, on a dataset laid out as people download
it: class folders at the root, mixed extensions, a class name with a space and a non-ASCII letter, one
broken file (tests/imagefolder.py make_downloaded)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_ok, distrain, metrics, one_line_error, rank_pids
from imagefolder import make_downloaded, make_imagefolder

SMALL = ["--gpus", "0", "--arch", "resnet18", "--image-size", "32", "--batch-size", "16", "--workers", "0",
         "--seed", "0", "--lr", "0.2"]




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
    fresh = make_downloaded(tmp_path / "fresh photos")
    line = one_line_error(distrain("launch", *SMALL, "--data", fresh, "--run-dir", tmp_path / "r"))
    assert "holds class folders but no train/ and val/" in line and "--val-split 0.1" in line
    assert sorted(p.name for p in fresh.iterdir() if p.name.startswith(".")) == []  # no index lock left in DATA
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
            "--val-split", "0.2", "--epochs", "60", "--batch-size", "8", "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # at least one whole checkpoint, then Ctrl-C twice, as people press it
    # meanwhile, the same command (in another terminal), and with --overwrite: refused, nothing touched
    for extra in ([], ["--overwrite"]):
        second = distrain(*args[3:], *extra)
        assert second.returncode == 2 and "is being trained right now by another launch" in second.stderr, second.all
        assert f"(pid {proc.pid} on this machine)" in second.stderr and (run_dir / "checkpoints" / "last.pt").exists()
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
        for line in resumed.stdout:  # the header says where it resumes, before the first step's line
            if "resuming at" in line or "Traceback" in line or re.match(r"epoch \d+ step \d+/", line):
                break
        # mid-epoch, or the end of an epoch when the second SIGINT cut the mid-epoch save short
        assert "resuming at epoch" in line or "resuming at the end of epoch" in line, line
    finally:
        os.killpg(resumed.pid, signal.SIGKILL)  # the launcher dies (as by the OOM killer) ...
        resumed.wait()
    deadline = time.monotonic() + 60  # ... and its ranks stop too: none trains on unwatched
    while rank_pids(run_dir / "config.toml") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not rank_pids(run_dir / "config.toml"), "ranks outlived their launcher"


COMMANDS = ["", "launch", "train", "eval", "check", "bench", "status", "predict", "export", "pack", "index",
            "recipes", "tensorboard", "sweep"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_is_true_and_whole_at_80_columns(command):
    proc = distrain(*([command] if command else []), "--help", env={"COLUMNS": "80"})
    assert_ok(proc)
    assert "…" not in proc.stdout, proc.stdout  # no cell cut short
    assert all(len(line) <= 80 for line in proc.stdout.splitlines())
    options = [line for line in proc.stdout.splitlines() if line.lstrip("│ *").startswith("--")]
    assert not any(t in line for line in options for t in ("<str>", "<int>", "<float>")), proc.stdout  # a word
    # says what goes after an option (N, DIR, HOST:PORT, its choices)
    if command in ("eval", "predict"):
        assert "[default: 224]" not in proc.stdout and "the checkpoint's" in proc.stdout
        assert "holding train/ and val/" not in proc.stdout
    if command == "export":
        assert "safetensors, onnx, torch-export" in proc.stdout


def test_negative_switches_work_though_help_lists_them_in_words(tmp_path, downloaded):
    proc = distrain("launch", "--gpus", "0", "--data", downloaded, "--val-split", "0.2", "--no-decay-norm-bias",
                    "--no-channels-last", "--dry-run", "--run-dir", tmp_path / "r")
    assert_ok(proc)
    assert "--no-channels-last --no-decay-norm-bias" in proc.stdout


def test_config_toml_holds_absolute_paths_and_runs_from_any_folder(downloaded, tmp_path):
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    os.symlink(downloaded, here / "photos")
    first = distrain("launch", *SMALL, "--data", "photos", "--val-split", "0.2", "--epochs", "1",
                     "--steps-per-epoch", "2", "--run-dir", "runs/r", cwd=here)
    assert_ok(first)
    config = (here / "runs" / "r" / "config.toml").read_text()
    assert f'data = "{here / "photos"}"' in config and f'run_dir = "{here / "runs" / "r"}"' in config
    again = distrain("launch", "--config", here / "runs" / "r" / "config.toml", cwd=elsewhere)
    assert_ok(again)
    assert "run complete" in again.stdout  # the same run, found from another folder
    more = distrain("launch", "--config", here / "runs" / "r" / "config.toml", "--epochs", "2", cwd=elsewhere)
    assert_ok(more)
    assert "resuming at the end of epoch 1" in more.stdout
    assert not (elsewhere / "runs").exists()


def _no_sinfo_path(tmp_path) -> str:
    """A PATH with the interpreter and a shell but no SLURM commands: a machine that cannot ask SLURM."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bash", "sh", "env"):
        os.symlink(subprocess.run(["which", name], capture_output=True, text=True).stdout.strip(), bin_dir / name)
    os.symlink(sys.executable, bin_dir / "python")
    return str(bin_dir)


def test_slurm_without_gpus_where_slurm_cannot_be_asked_is_refused(downloaded, tmp_path):
    proc = distrain("launch", "--slurm", "--data", downloaded, "--val-split", "0.2", "--dry-run",
                    env={"PATH": _no_sinfo_path(tmp_path)})
    line = one_line_error(proc)
    assert "--slurm without --gpus" in line and "pass --gpus N" in line


@pytest.mark.slurm
def test_slurm_dry_run_takes_the_topology_from_the_partition_and_asks_for_cpus(downloaded, tmp_path):
    from slurm_cluster import cluster_available

    if not cluster_available():
        pytest.skip("no SLURM cluster (bash tests/slurm/cluster.sh up)")
    proc = distrain("launch", "--slurm", "--data", downloaded, "--val-split", "0.2", "--workers", "3",
                    "--dry-run", "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert_ok(proc)
    assert proc.stdout.startswith("#!/bin/bash\n")  # the script alone on stdout, the summary on stderr
    assert "# world size 1: 1 node(s) x 1 cpu process(es), no GPUs (partition debug: its nodes have none)" \
        in proc.stderr
    assert "# 2 CPU cores per node (all a node of partition debug has; --workers 3 + 1 per process would want 4" \
        in proc.stderr
    assert "#SBATCH --cpus-per-task=2\n" in proc.stdout and f"#SBATCH --chdir={tmp_path}\n" in proc.stdout
    gpus = distrain("launch", "--slurm", "--gpus", "4", "--data", downloaded, "--val-split", "0.2", "--dry-run",
                    "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert "4 GPU(s) per node (from --gpus)" in gpus.stderr and "--gpus-per-node=4" in gpus.stdout
    gres = distrain("launch", "--slurm", "--gpus", "2", "--gpu-directive", "gres", "--cpus-per-gpu", "1", "--data",
                    downloaded, "--val-split", "0.2", "--dry-run", "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert_ok(gres)
    assert "#SBATCH --gres=gpu:2\n" in gres.stdout and "--gpus-per-node" not in gres.stdout
    assert "#SBATCH --cpus-per-task=2\n" in gres.stdout  # one torchrun task per node: 1 CPU for each of its 2 GPUs
    assert "# 2 CPU cores per node (--cpus-per-gpu 1; --cpus-per-gpu N to change)" in gres.stderr
    wrong = distrain("launch", "--slurm", "--partition", "nope", "--data", downloaded, "--val-split", "0.2",
                     "--dry-run", cwd=tmp_path)
    assert "SLURM here knows no such partition" in one_line_error(wrong)
