"""--decode device (distrib/device_decode.py) on the CPU, against the worker path on the same real JPEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_ok, distrain, metrics
from imagefolder import class_image, corrupt_file, make_imagefolder
from PIL import Image

from distrib.config import RunConfig
from distrib.data import images
from distrib.data.datasets import FolderDataset, sample_rng
from distrib.data.device_decode import CollateEncoded, Encoded, EncodedDataset, decode_batch
from distrib.data.loaders import build_loaders, to_device
from distrib.runtime.env import DistEnv

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    # 160 px crops shrink enough for the worker path to decode at 1/2..1/4 scale: the harder comparison.
    return make_imagefolder(tmp_path_factory.mktemp("dd") / "big", size=160, train_per_class=8, val_per_class=2)


def epoch(root, decode: str, epoch: int = 1, **kw):
    values = dict(data=str(root), image_size=32, batch_size=8, workers=0, seed=5, decode=decode, device="cpu")
    loaders = build_loaders(RunConfig(**{**values, **kw}), DistEnv(), pin_memory=False)
    loaders.train_sampler.set_epoch(epoch)
    return list(loaders.train)


def test_device_decode_matches_the_worker_path(big):
    workers, device = epoch(big, "workers"), epoch(big, "device")
    assert len(workers) == len(device) == 4
    for w, d in zip(workers, device):
        assert torch.equal(w.labels, d.labels) and d.images.dtype == torch.uint8 and d.images.shape == w.images.shape
        per_image = (w.images.float() - d.images.float()).abs().mean(dim=(1, 2, 3))
        assert per_image.max() < 2, per_image  # decoder and resizer differ a little; a wrong box or flip is far more
        mirrored = (w.images.float() - d.images.flip(3).float()).abs().mean(dim=(1, 2, 3))
        assert (mirrored > per_image).all()  # the comparison can see a flip
    a, b = to_device(workers[0], CPU, False)[0], to_device(device[0], CPU, False)[0]
    assert (a - b).abs().mean() < 2 / 255 / 0.225  # normalised the same way


def test_crop_boxes_are_the_worker_paths(big, monkeypatch):
    folder = FolderDataset(str(big / "train"), {f"class{i}": i for i in range(4)}, 32, True, seed=5, rank=1)
    drawn = []
    real = images.rrc_box
    monkeypatch.setattr(images, "rrc_box", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    encoded = EncodedDataset(folder)
    for index in range(0, len(folder), 3):
        item = encoded[(index, 7)]
        folder[(index, 7)]
        assert isinstance(item, Encoded) and item.box == drawn[-1] and item.label == folder.label(index)
        rng = sample_rng(5, 7, 1, index)
        real(160, 160, rng)
        assert item.flip == (rng.random() < 0.5)


def test_corrupt_jpegs_are_skipped_and_named(tmp_path):
    root = make_imagefolder(tmp_path / "d", size=96, train_per_class=4, val_per_class=1)
    truncated = corrupt_file(root / "train" / "class1" / "0002.jpg", "truncated")  # only a full decode sees it
    garbage = corrupt_file(root / "train" / "class2" / "0000.jpg", "garbage")     # the header parse sees it
    folder = FolderDataset(str(root / "train"), {f"class{i}": i for i in range(4)}, 32, True)
    index = [folder.read(i)[0] for i in range(len(folder))].index(str(truncated))
    assert isinstance(EncodedDataset(folder)[(index, 0)], Encoded)  # so it is the device decode that must catch it
    batches = epoch(root, "device")
    skipped = [s for b in batches for s in b.skipped]
    assert len(skipped) == 2 and sum(len(b.labels) for b in batches) == 14
    assert any(s.startswith(f"{truncated}: corrupt or truncated image") for s in skipped), skipped
    assert any(s.startswith(f"{garbage}: ") for s in skipped), skipped
    for b in batches:
        assert b.images.shape == (len(b.labels), 3, 32, 32)


def test_png_and_rotated_jpeg_fall_back_to_the_worker_decode(tmp_path):
    folder_dir = tmp_path / "train" / "a"
    folder_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    class_image(0, 2, (96, 64), rng).save(folder_dir / "0.jpg", quality=92)
    class_image(1, 2, (96, 64), rng).save(folder_dir / "1.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    class_image(1, 2, (96, 64), rng).save(folder_dir / "2.jpg", exif=exif)
    folder = FolderDataset(str(tmp_path / "train"), {"a": 0}, 32, True, seed=1)
    encoded = EncodedDataset(folder)
    items = [encoded[(i, 0)] for i in range(3)]
    assert isinstance(items[0], Encoded) and not isinstance(items[1], Encoded) and not isinstance(items[2], Encoded)
    batch = decode_batch(CollateEncoded(32)(items), CPU, 32)
    assert batch.skipped == [] and batch.images.shape == (3, 3, 32, 32)
    # Device-decoded samples come first, then the worker-decoded ones, pixel for pixel the worker path's.
    assert torch.equal(batch.images[1], folder[(1, 0)][0]) and torch.equal(batch.images[2], folder[(2, 0)][0])


def test_train_through_the_cli_with_device_decode(tmp_path):
    root = make_imagefolder(tmp_path / "d", size=48, train_per_class=4, val_per_class=1)
    corrupt_file(root / "train" / "class3" / "0001.jpg", "truncated")  # 16 images, 2 steps of 8: all seen
    run_dir = tmp_path / "run"
    proc = distrain("train", "--data", root, "--decode", "device", "--device", "cpu", "--epochs", "1",
                    "--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--workers", "1",
                    "--run-dir", run_dir, "--steps-per-epoch", "2", timeout=180)
    assert_ok(proc)
    rows = metrics(run_dir)
    assert len(rows) == 1 and rows[0]["skipped_images"] == 1 and rows[0]["val_samples"] == 5
    assert 'decode = "device"' in (run_dir / "config.toml").read_text()
