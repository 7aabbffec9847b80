"""`distrain pack` and the shards format: same batches and metrics as the folder, readable by webdataset
and tar, resumable packing, checks that catch a damaged shard."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_ok, distrain
from imagefolder import make_imagefolder

from distrib.config import RunConfig
from distrib.data import index
from distrib.data.loaders import build_loaders
from distrib.data.pack import pack
from distrib.data.shards import MANIFEST, verify_shard
from distrib.runtime.env import DistEnv


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "imagefolder")


@pytest.fixture(scope="module")
def packed(folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "shards"
    proc = distrain("pack", folder, out, "--shard-size", "40KB", "--procs", "2")
    assert_ok(proc)
    assert "packed 4 classes" in proc.stdout and "125/125" in proc.stdout
    return out


def loaders(root, rank=0, world=1, **kw):
    cfg = RunConfig(data=str(root), image_size=32, batch_size=8, workers=0, seed=3, **kw)
    return build_loaders(cfg, DistEnv(rank=rank, world_size=world, launcher="torchrun" if world > 1 else "none"),
                         pin_memory=False)


def batches(ld, epoch, start=0):
    ld.train_sampler.set_epoch(epoch, start)
    return [(b.images, b.labels) for b in ld.train]


def test_shards_give_the_folders_batches_and_resume_mid_epoch(folder, packed):
    a, b = loaders(folder, rank=1, world=2), loaders(packed, rank=1, world=2)
    assert a.classes == b.classes and (a.num_train, a.num_val) == (b.num_train, b.num_val)
    full_a, full_b = batches(a, 2), batches(b, 2)
    for (xa, ya), (xb, yb) in zip(full_a, full_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xr, yr), (xf, yf) in zip(batches(b, 2, start=2), full_b[2:], strict=True):  # resumed at batch 2
        assert torch.equal(xr, xf) and torch.equal(yr, yf)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_validation_on_shards_covers_every_image_once(packed, world):
    seen = []
    for rank in range(world):
        val = loaders(packed, rank=rank, world=world).val
        seen += [val.dataset.at(i) for i in val.sampler]
    assert sorted(seen) == list(range(29))


def test_device_decode_reads_shards(folder, packed):
    a, b = loaders(folder, decode="device", device="cpu"), loaders(packed, decode="device", device="cpu")
    for (xa, ya), (xb, yb) in zip(batches(a, 0), batches(b, 0), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_webdataset_and_tar_read_the_shards(folder, packed):
    import webdataset

    manifest = json.loads((packed / MANIFEST).read_text())
    urls = [str(packed / "train" / s["name"]) for s in manifest["splits"]["train"]["shards"]]
    samples = list(webdataset.WebDataset(urls, shardshuffle=False))
    train = index.ensure(str(folder)).split("train")
    assert [s["__key__"] for s in samples] == [f"{i:08d}" for i in range(96)]
    assert [int(s["cls"]) for s in samples] == list(train.labels)
    assert samples[5]["jpg"] == Path(train.path(5)).read_bytes()
    members = subprocess.run(["tar", "tf", urls[0]], capture_output=True, text=True, check=True).stdout.split()
    assert members[:2] == ["00000000.cls", "00000000.jpg"]


def test_interrupted_pack_completes_without_duplicates(folder, tmp_path):
    out = tmp_path / "out"
    pack(str(folder), str(out), shard_bytes=40_000)
    # The state a kill leaves: a half-written shard, a finished one lost, no manifest.
    first = out / "train" / "train-000000.tar"
    (out / "train" / "train-000001.tar.tmp").write_bytes(first.read_bytes()[:3000])
    (out / "train" / "train-000001.tar").unlink()
    (out / MANIFEST).unlink()
    before = first.stat().st_mtime_ns
    manifest = pack(str(folder), str(out), shard_bytes=40_000)
    assert first.stat().st_mtime_ns == before  # finished shards are kept
    assert all(verify_shard(str(out), "train", n) == [] for n in range(len(manifest["splits"]["train"]["shards"])))
    import webdataset

    keys = [s["__key__"] for s in webdataset.WebDataset(sorted(map(str, (out / "train").glob("*.tar"))),
                                                         shardshuffle=False)]
    assert keys == [f"{i:08d}" for i in range(96)]


def test_check_catches_a_truncated_shard(folder, tmp_path):
    out = tmp_path / "out"
    pack(str(folder), str(out), shard_bytes=40_000)
    shard = out / "train" / "train-000001.tar"
    os.truncate(shard, shard.stat().st_size // 2)
    problems = verify_shard(str(out), "train", 1)
    assert any("when packed" in p for p in problems) and any("truncated" in p or "index says" in p or "not a readable tar" in p for p in problems)
    proc = distrain("check", "--data", out, "--gpus", "0", "--run-dir", tmp_path / "run", env={"COLUMNS": "400"})
    assert proc.returncode == 1 and "train-000001.tar has" in proc.stdout, proc.all


def test_two_process_run_on_shards_logs_the_folders_metrics(folder, packed, tmp_path):
    runs = {}
    for name, data in (("folder", folder), ("shards", packed)):
        proc = distrain("launch", "--gpus", "0", "--procs", "2", "--data", data, "--epochs", "2",
                        "--steps-per-epoch", "2", "--run-dir", tmp_path / name, *TINY)
        assert_ok(proc)
        runs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(runs["folder"], runs["shards"], strict=True):
        for key in ("train_loss", "val_loss", "val_acc1", "val_acc5", "val_samples"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), key
    assert len(index.builds(str(folder))) == 1  # built once (by pack); the launcher and the ranks only loaded it
