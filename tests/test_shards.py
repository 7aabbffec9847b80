"""`distrain pack` and the shards format: same batches and metrics as the folder, readable by webdataset
and tar, resumable packing, checks that catch a damaged shard."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_ok, distrain, small_tmpfs
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


@pytest.fixture
def small_disk(tmp_path):
    """A real 200 KiB filesystem (tmpfs): a pack of the test folder fills it part of the way through."""
    with small_tmpfs(tmp_path / "disk", "200k") as disk:
        yield disk


def test_a_pack_stopped_by_a_full_disk_resumes_with_the_same_command(folder, small_disk):
    """`distrain pack` on a disk that fills: one line and exit 2, the finished shards kept and no half-written
    one left; with room made, the same command writes only the others, and the shards hold every image once."""
    out = small_disk / "shards"
    command = ("pack", folder, out, "--shard-size", "8KB", "--procs", "2")
    first = distrain(*command)
    assert first.returncode == 2 and "Traceback" not in first.all, first.all
    line = first.stderr.strip()
    assert len(line.splitlines()) == 1 and "No space left on device" in line, line
    kept, planned = map(int, re.search(r"(\d+) of (\d+) shards are finished and kept", line).groups())
    finished = sorted(out.rglob("*.tar"))
    assert 0 < kept == len(finished) < planned and not list(out.rglob("*.tmp")) and not (out / MANIFEST).exists()
    written = {p: p.stat().st_mtime_ns for p in finished}
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # room made
    second = distrain(*command)
    assert_ok(second)
    assert "train 96 images in" in second.stdout and len(list(out.rglob("*.tar"))) == planned
    assert {p: p.stat().st_mtime_ns for p in finished} == written  # finished shards were not written again
    manifest = json.loads((out / MANIFEST).read_text())
    import webdataset

    for split, count in (("train", 96), ("val", 29)):
        shards = manifest["splits"][split]["shards"]
        assert all(verify_shard(str(out), split, n) == [] for n in range(len(shards)))
        keys = [s["__key__"] for s in webdataset.WebDataset([str(out / split / s["name"]) for s in shards],
                                                             shardshuffle=False)]
        assert keys == [f"{i:08d}" for i in range(count)]  # every image once, in order


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
