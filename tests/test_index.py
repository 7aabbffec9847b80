"""The sample index (distrib/data/index.py): built once, memory-mapped, rebuilt when the tree changes, no
listing by ranks when it exists; hidden folders; --val-split."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import distrain
from imagefolder import class_image, make_imagefolder

from distrib.config import ConfigError, RunConfig
from distrib.data import index
from distrib.data.folder import FolderSource

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path) -> Path:
    return make_imagefolder(tmp_path / "data", classes=3, train_per_class=6, val_per_class=2, size=16)


def test_index_matches_the_listing_and_pickles_as_file_names(data):
    idx = index.ensure(str(data))
    assert idx.classes == ["class0", "class1", "class2"] and idx.splits == ["train", "val"]
    train = idx.split("train")
    expected = sorted(str(p) for p in (data / "train").rglob("*.jpg"))
    assert [train.path(i) for i in range(len(train))] == expected
    assert list(train.labels) == [int(Path(p).parent.name[-1]) for p in expected]
    assert isinstance(train.labels, np.memmap)
    # What DataLoader workers receive: file names to map, not the arrays.
    assert len(pickle.dumps(FolderSource(train))) < 1000
    assert pickle.loads(pickle.dumps(FolderSource(train))).name(3) == expected[3]


def test_concurrent_processes_build_it_once(data):
    code = textwrap.dedent(f"""
        import sys, time
        from distrib.data import index
        while time.time() < {__import__('time').time() + 4}: pass   # start together
        print(len(index.ensure(sys.argv[1]).split("train")))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for _ in range(3)]
    assert [p.communicate(timeout=120)[0].strip() for p in procs] == ["18"] * 3
    assert len(index.builds(str(data))) == 1


def test_a_changed_class_folder_rebuilds_it(data):
    index.ensure(str(data))
    assert index.load(str(data)) is not None
    class_image(0, 3, (16, 16), np.random.default_rng(0)).save(data / "train" / "class1" / "new.jpg")
    assert index.load(str(data)) is None  # the class folder's mtime changed
    assert len(index.ensure(str(data)).split("train")) == 19
    assert len(index.builds(str(data))) == 2
    index.ensure(str(data))
    assert len(index.builds(str(data))) == 2  # fresh again: loaded, not rebuilt


def test_distrain_cache_puts_every_index_there(data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    proc = distrain("index", data, env={"DISTRAIN_CACHE": str(cache)})  # writable DATA: still the cache
    assert proc.returncode == 0, proc.all
    folders = list((cache / "index").iterdir()) if (cache / "index").is_dir() else []
    assert len(folders) == 1 and f"in {folders[0]}" in proc.stdout, (proc.stdout, folders)
    assert not (data / index.INDEX_DIR).exists()
    monkeypatch.setenv("DISTRAIN_CACHE", str(cache))
    assert index.load(str(data)).folder == str(folders[0])  # the next process finds it there


@pytest.fixture
def read_only(data, tmp_path):
    """DATA seen through a read-only bind mount: nobody, root included, can write there."""
    ro = tmp_path / "read-only data"
    ro.mkdir()
    done = subprocess.run(["mount", "--bind", str(data), str(ro)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(f"mount --bind failed: {done.stderr.strip()}")
        pytest.skip(f"needs root for a read-only bind mount: {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], check=True, capture_output=True)
        with pytest.raises(OSError, match="Read-only file system"):
            (ro / "probe").write_text("x")
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_read_only_data_goes_to_the_default_cache(read_only, data, tmp_path, monkeypatch):
    """No DISTRAIN_CACHE: the index of read-only DATA goes to ~/.cache/distrain (or $XDG_CACHE_HOME/distrain),
    is found there by the next process, and lists the same images as it would beside DATA."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DISTRAIN_CACHE", "XDG_CACHE_HOME")}
    env["HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "launch", "index", str(read_only)], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(REPO)}, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cache = home / ".cache" / "distrain" / "index"
    folders = list(cache.iterdir()) if cache.is_dir() else []
    assert len(folders) == 1 and f"in {folders[0]}" in proc.stdout, (proc.stdout, folders)
    assert not (read_only / index.INDEX_DIR).exists() and not (data / index.INDEX_DIR).exists()
    monkeypatch.delenv("DISTRAIN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(home))
    idx = index.load(str(read_only))  # the next process finds it: nothing rebuilt
    assert idx is not None and idx.folder == str(folders[0])
    train = idx.split("train")
    assert [train.path(i) for i in range(len(train))] == sorted(str(p) for p in (read_only / "train").rglob("*.jpg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert index.ensure(str(read_only)).folder.startswith(str(tmp_path / "xdg" / "distrain" / "index"))


LISTINGS = textwrap.dedent("""
    import sys
    from distrib.config import RunConfig
    from distrib.data import index
    from distrib.data.loaders import build_loaders
    from distrib.runtime.env import DistEnv
    root = sys.argv[1]
    if sys.argv[2] == "fresh":
        index.ensure(root)
    listed = []
    sys.addaudithook(lambda event, args: listed.append(args[0]) if event in ("os.scandir", "os.listdir")
                     and str(args[0]).startswith(root) else None)
    cfg = RunConfig(data=root, image_size=16, batch_size=4, workers=0, seed=1)
    loaders = build_loaders(cfg, DistEnv(rank=1, world_size=2, launcher="torchrun"), pin_memory=False)
    next(iter(loaders.train)); next(iter(loaders.val))
    print(len(listed))
""")


@pytest.mark.parametrize("state", ["fresh", "stale"])
def test_a_rank_lists_no_data_directory_when_the_index_exists(data, state):
    out = subprocess.run([sys.executable, "-c", LISTINGS, str(data), state], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr
    listed = int(out.stdout.split()[-1])
    assert listed == 0 if state == "fresh" else listed > 0


LAUNCHER_LISTINGS = textwrap.dedent("""
    import sys
    from distrib.config import RunConfig
    from launch import preflight, topology
    root, listed = sys.argv[1], []
    sys.addaudithook(lambda event, args: listed.append(args[0]) if event in ("os.scandir", "os.listdir")
                     and str(args[0]).startswith(root) else None)
    cfg = RunConfig(data=root, batch_size=4, gpus=0, procs=2, run_dir=sys.argv[2])
    failed = preflight.cheap_checks(cfg, topology.make_plan(cfg, 0))  # what `distrain launch` runs first
    print(len(listed), [c.name for c in failed])
""")


def test_the_launcher_lists_no_data_directory_when_the_index_exists(data, tmp_path):
    index.ensure(str(data))
    out = subprocess.run([sys.executable, "-c", LAUNCHER_LISTINGS, str(data), str(tmp_path / "run")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(maxsplit=1) == ["0", "[]\n"]


def test_hidden_folders_are_not_classes_anywhere(data, tmp_path):
    for split in ("train", "val"):
        shutil.copytree(data / split / "class0", data / split / ".ipynb_checkpoints")
    (data / "train" / "class2" / ".ipynb_checkpoints").mkdir()
    shutil.copy(data / "train" / "class2" / "0000.jpg", data / "train" / "class2" / ".ipynb_checkpoints")
    idx = index.ensure(str(data))
    assert idx.classes == ["class0", "class1", "class2"] and len(idx.split("train")) == 18
    proc = distrain("check", "--data", data, "--gpus", "0", "--run-dir", tmp_path / "run", "--sample", "3",
                    env={"COLUMNS": "400"})
    assert "ignored hidden folders" in proc.stdout and "train/.ipynb_checkpoints" in proc.stdout, proc.all
    assert re.search(r"reading headers \(\d+ process(es)?\): 3/3 \(100%\)", proc.stdout)  # a bar on a terminal


def test_val_split_is_stratified_deterministic_and_disjoint():
    labels = np.repeat(np.arange(4), [10, 20, 3, 1]).astype(np.int32)
    train, val = index.holdout(labels, 0.2, seed=7)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[val], minlength=4).tolist() == [2, 4, 1, 0]  # a 1-image class stays in train
    again = index.holdout(labels, 0.2, seed=7)
    assert (again[1] == val).all() and not (index.holdout(labels, 0.2, seed=8)[1] == val).all()


def test_val_split_on_a_train_only_folder(data, tmp_path):
    shutil.rmtree(data / "val")
    proc = distrain("train", "--data", data, "--run-dir", tmp_path / "r", "--epochs", "1")
    assert proc.returncode == 2 and "pass --val-split 0.1" in proc.stderr and "Traceback" not in proc.all
    from distrib.data.loaders import build_loaders
    from distrib.runtime.env import DistEnv

    cfg = RunConfig(data=str(data), val_split=0.34, image_size=16, batch_size=2, workers=0, seed=3)
    counts = set()
    for rank in range(2):
        loaders = build_loaders(cfg, DistEnv(rank=rank, world_size=2, launcher="torchrun"), pin_memory=False)
        train, val = loaders.train.dataset, loaders.val.dataset
        counts.add((len(train), len(val)))
        assert {train.at(i) for i in range(len(train))}.isdisjoint(val.at(i) for i in range(len(val)))
    assert counts == {(12, 6)}  # the same split on every rank
    with pytest.raises(ConfigError, match="between 0 and 1"):
        RunConfig(data=str(data), val_split=1.5).validate()


def test_a_val_split_run_records_it_and_eval_scores_the_same_images(data, tmp_path):
    shutil.rmtree(data / "val")
    run = tmp_path / "run"
    proc = distrain("train", "--data", data, "--val-split", "0.34", "--run-dir", run, "--epochs", "1",
                    "--arch", "resnet18", "--image-size", "16", "--batch-size", "4", "--workers", "0", "--seed", "5")
    assert proc.returncode == 0, proc.all
    assert "val_split = 0.34" in (run / "config.toml").read_text()
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["val_samples"] == 6
    proc = distrain("eval", "--checkpoint", run / "checkpoints" / "last.pt", "--data", data, "--gpus", "0",
                    "--procs", "2", "--json")
    assert proc.returncode == 0, proc.all
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["samples"] == 6 and result["acc1"] == pytest.approx(row["val_acc1"], rel=1e-6)
    # Without --data: the data it trained on, recorded in the checkpoint; the same held-out images
    proc = distrain("eval", "--checkpoint", run / "checkpoints" / "last.pt", "--gpus", "0", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.all
    assert f"scoring the images of {data} held out by --val-split 0.34 (seed 5)" in proc.stderr
    alone = json.loads(proc.stdout.strip().splitlines()[-1])  # 1 process: the loss summed in another order
    assert {**alone, "loss": pytest.approx(result["loss"], rel=1e-6)} == result
    shutil.move(data, tmp_path / "moved")
    gone = distrain("eval", "--checkpoint", run / "checkpoints" / "last.pt", "--gpus", "0")
    assert gone.returncode == 2 and "Traceback" not in gone.all, gone.all
    assert gone.stderr.strip().splitlines() == [f"error: {run / 'checkpoints' / 'last.pt'} was trained on {data}, "
                                                "which is not there any more: give the data to score with --data "
                                                "DIR (class folders, or a root with val/)"]


def test_index_and_pack_commands(data, tmp_path):
    proc = distrain("index", data)
    assert proc.returncode == 0 and "3 classes, train 18, val 7 images" in proc.stdout, proc.all
    assert distrain("index", data).returncode == 0 and len(index.builds(str(data))) == 1  # fresh: not rebuilt
    assert distrain("index", data, "--rebuild").returncode == 0 and len(index.builds(str(data))) == 2
    for args in (("index", tmp_path / "missing"), ("pack", tmp_path / "missing", tmp_path / "out"),
                 ("pack", data, tmp_path / "out", "--shard-size", "lots")):
        proc = distrain(*args)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.all, proc.all
