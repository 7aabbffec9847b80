"""A real run: torchrun with 2 gloo processes on CPU, checked through what it leaves in the run dir."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import TINY, TINY_ARCH, assert_ok, distrain, metrics
from imagefolder import corrupt_file, make_imagefolder

VAL_IMAGES = 29  # prime: no world size > 1 divides it


def test_metrics_rows_cover_the_whole_val_set(two_rank_run):
    rows = metrics(two_rank_run)
    assert [r["epoch"] for r in rows] == [0, 1]  # one row per epoch: only rank 0 writes
    for row in rows:
        assert row["world_size"] == 2
        assert row["val_samples"] == VAL_IMAGES  # no padding, no duplicates, nothing missing
        assert row["images_per_sec"] > 0 and row["epoch_seconds"] > 0
        assert row["skipped_images"] == 0
        assert set(row) >= {"train_loss", "val_loss", "val_acc1", "val_acc5", "lr"}
    assert rows[-1]["train_loss"] < 50, rows  # finite and sane (learning is shown on digits: README)


def test_lr_is_scaled_to_the_global_batch(two_rank_run):
    assert metrics(two_rank_run)[0]["lr"] == pytest.approx(0.2 * 32 / 256)


def test_tensorboard_scalars_read_back(two_rank_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted((two_rank_run / "tb").glob("events.out.tfevents.*"))
    assert len(events) == 1, events  # one writer: global rank 0
    acc = EventAccumulator(str(two_rank_run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/images_per_sec", "val/acc1", "val/acc5", "val/loss"} <= tags
    acc1 = [e.value for e in acc.Scalars("val/acc1")]
    assert acc1 == pytest.approx([r["val_acc1"] for r in metrics(two_rank_run)])
    assert "config" in "".join(acc.Tags()["tensors"])


def test_only_rank_zero_writes(two_rank_run):
    written = {p.relative_to(two_rank_run).as_posix() for p in two_rank_run.rglob("*") if p.is_file()}
    logs = {p for p in written if p.startswith("logs/")}
    assert {"logs/rank0.log", "logs/rank1.log"} <= logs  # per-rank logs are the exception, by design
    rest = written - logs
    assert {"config.toml", "launch.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"} <= rest
    records = {"config.toml", "launch.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
               "position.json", "outcome.json", "live.json"}  # position.json: rank 0, beside last.pt; outcome.json:
    # the launcher; live.json: rank 0's newest step-level figures
    profile = {p for p in rest if p.startswith("profile/")}  # --profile without --profile-ranks: rank 0's only
    assert profile == {"profile/rank0-trace.json", "profile/rank0-top.txt"}, profile
    assert all(p.startswith("tb/") for p in rest - records - profile), rest


def test_checkpoint_loads_weights_only_without_module_prefix(two_rank_run):
    ckpt = torch.load(two_rank_run / "checkpoints" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["epoch"] == 2 and ckpt["batch"] == 0 and ckpt["arch"] == TINY_ARCH
    assert ckpt["num_classes"] == 8 and ckpt["classes"] == [f"class{i}" for i in range(8)]
    for key in ("optimizer", "scheduler", "scaler", "step", "best_acc1", "config", "rng"):
        assert key in ckpt
    best = torch.load(two_rank_run / "checkpoints" / "best.pt", weights_only=True)
    assert best["best_acc1"] == max(r["val_acc1"] for r in metrics(two_rank_run))


def test_resume_trains_no_epoch_twice_and_matches(two_rank_run, imagefolder, tmp_path):
    """Stop after epoch 0 (a 1-epoch run), then continue to 2 epochs: the same numbers as one 2-epoch run."""
    run_dir = tmp_path / "resumed"
    base = ["--gpus", "0", "--procs", "2", "--data", imagefolder, *TINY]
    common = [*base, "--run-dir", run_dir]
    assert_ok(distrain("launch", "--epochs", "1", *common))
    # --resume PATH: another run dir goes on from that checkpoint file
    elsewhere = tmp_path / "from-file"
    ckpt = run_dir / "checkpoints" / "last.pt"
    from_file = distrain("launch", "--epochs", "2", *base, "--run-dir", elsewhere, "--resume", ckpt)
    assert_ok(from_file)
    assert f"resumed from {ckpt} at the end of epoch 1" in from_file.stdout, from_file.stdout
    proc = distrain("launch", "--epochs", "2", *common)
    assert_ok(proc)
    assert "resuming at the end of epoch 1" in proc.stdout
    resumed, straight = metrics(run_dir), metrics(two_rank_run)
    assert [r["epoch"] for r in resumed] == [0, 1]  # epoch 0 was not trained again
    assert [r["epoch"] for r in metrics(elsewhere)] == [1]
    for a, b in [*zip(resumed, straight), (metrics(elsewhere)[0], straight[1])]:
        for key in ("train_loss", "val_loss", "val_acc1", "val_acc5", "val_samples", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (key, a, b)


@pytest.mark.parametrize("procs", [1, 3])
def test_eval_accuracy_is_identical_for_any_world_size(two_rank_run, imagefolder, procs):
    import json

    proc = distrain("eval", "--checkpoint", two_rank_run / "checkpoints" / "last.pt", "--data", imagefolder,
                    "--gpus", "0", "--procs", procs, "--json", "--image-size", "32", "--workers", "0")
    assert_ok(proc)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"acc1", "acc5", "loss", "samples", "skipped"} and result["skipped"] == 0
    assert result["samples"] == VAL_IMAGES
    last = metrics(two_rank_run)[-1]
    assert result["acc1"] == last["val_acc1"] and result["acc5"] == last["val_acc5"]
    assert result["loss"] == pytest.approx(last["val_loss"], rel=1e-6)  # a mean over images, not over ranks


def test_data_parallel_path_runs_on_cpu(imagefolder, tmp_path):
    run_dir = tmp_path / "dp"
    proc = distrain("launch", "--strategy", "dp", "--gpus", "0", "--data", imagefolder, "--epochs", "1",
                    "--steps-per-epoch", "2", "--run-dir", run_dir, *TINY, "--optimizer", "rmsprop",
                    "--weight-decay", "0.003", "--log-interval", "0", "--no-decay-norm-bias")
    assert_ok(proc)
    assert "strategy dp" in proc.stdout and "optimizer rmsprop" in proc.stdout
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state = ckpt["optimizer"]["state"]  # RMSprop's own state, saved for the resume
    assert state and all("square_avg" in s for s in state.values()) and "alpha" in ckpt["optimizer"]["param_groups"][0]
    # --weight-decay on the weights; --no-decay-norm-bias: none on the norm scales and biases (1-D)
    shapes = [p.ndim for p in torchvision.models.get_model(TINY_ARCH, num_classes=8).parameters()]
    decay = {g["weight_decay"]: len(g["params"]) for g in ckpt["optimizer"]["param_groups"]}
    assert decay == {0.003: sum(n > 1 for n in shapes), 0.0: shapes.count(1)}, decay
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "train/loss" in tags and not any(t.startswith("step/") for t in tags), tags  # --log-interval 0
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert metrics(run_dir)[0]["val_samples"] == VAL_IMAGES


def test_corrupt_jpeg_is_skipped_counted_and_logged(tmp_path):
    data = make_imagefolder(tmp_path / "data")
    bad = corrupt_file(data / "train" / "class1" / "0003.jpg", "truncated")
    corrupt_file(data / "val" / "class2" / "0001.jpg", "text")
    run_dir = tmp_path / "run"
    proc = distrain("train", "--data", data, "--epochs", "1", "--run-dir", run_dir, "--device", "cpu", *TINY,
                    "--optimizer", "nesterov")
    assert_ok(proc)
    groups = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["nesterov"] and g["momentum"] > 0 for g in groups)  # --optimizer nesterov: SGD with Nesterov
    row = metrics(run_dir)[0]
    assert row["skipped_images"] == 2
    assert row["val_samples"] == VAL_IMAGES - 1
    log = (run_dir / "logs" / "rank0.log").read_text()
    assert log.count(str(bad)) == 1


def test_mismatched_checkpoint_is_refused(two_rank_run, imagefolder, tmp_path):
    ckpt = two_rank_run / "checkpoints" / "last.pt"
    proc = distrain("train", "--data", imagefolder, "--resume", ckpt, "--run-dir", tmp_path / "r",
                    "--device", "cpu", *TINY, "--arch", "resnet34")
    assert proc.returncode == 2, proc.all
    assert f"is for --arch {TINY_ARCH}, not resnet34" in proc.stderr
    assert "Traceback" not in proc.all

    other = make_imagefolder(tmp_path / "six", classes=6, train_per_class=4, val_per_class=2)
    proc = distrain("train", "--data", other, "--resume", ckpt, "--run-dir", tmp_path / "r2",
                    "--device", "cpu", *TINY)
    assert proc.returncode == 2, proc.all
    assert "has 8 classes but the data has 6" in proc.stderr


def test_status_reads_a_run_with_torch_unimportable(two_rank_run):
    """`distrain status` on a login node without torch: run-dir files (position.json, outcome.json,
    metrics.jsonl, live.json) are plain JSON, read by the launcher alone."""
    code = ("import sys\nsys.modules['torch'] = None  # any `import torch` now fails\n"
            f"sys.argv = ['distrain', 'status', {str(two_rank_run)!r}]\n"
            "from launch.cli import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finished, 2 of 2 epochs done" in proc.stdout, proc.stdout
