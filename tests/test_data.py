"""distrib/data.py and distrib/images.py on real image files, compared with torchvision where it defines
the behaviour (ImageFolder, RandomResizedCrop, Resize + CenterCrop, DistributedSampler, Normalize)."""

from __future__ import annotations

import collections
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolder import class_image, corrupt_file, make_imagefolder
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.transforms import functional as TF

from distrib.config import ConfigError, RunConfig
from distrib.data import images
from distrib.data.datasets import Batch, FolderDataset, Skipped, SyntheticDataset
from distrib.data.layout import check_dataset
from distrib.data.loaders import Collate, build_loaders, to_device
from distrib.data.samplers import TrainSampler, ValSampler
from distrib.runtime.env import DistEnv

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("data") / "imagefolder")


def config(root, **overrides) -> RunConfig:
    values = dict(data=str(root), image_size=32, batch_size=8, workers=0, seed=3)
    return RunConfig(**{**values, **overrides})


def dist_env(rank: int = 0, world: int = 1) -> DistEnv:
    return DistEnv(rank=rank, world_size=world, launcher="torchrun" if world > 1 else "none")


def epoch_batches(loaders, epoch: int, start_batch: int = 0) -> list[Batch]:
    loaders.train_sampler.set_epoch(epoch, start_batch)
    return list(loaders.train)


def save(img: Image.Image, path: Path, **kw) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return str(path)


# ---------------------------------------------------------------- check_dataset

def test_check_dataset_returns_imagefolder_classes(data):
    assert check_dataset(str(data)) == ImageFolder(str(data / "train")).classes == [f"class{i}" for i in range(4)]


def _missing(tmp):
    return tmp / "nope", "does not exist; pass --data"


def _no_val(tmp):
    root = make_imagefolder(tmp / "d", classes=2, train_per_class=2, val_per_class=1)
    shutil.rmtree(root / "val")
    return root, "no val/; pass --val-split 0.1"


def _empty_class(tmp):
    root = make_imagefolder(tmp / "d", classes=3, train_per_class=2, val_per_class=1)
    for f in (root / "val" / "class2").iterdir():
        f.unlink()
    (root / "val" / "class2" / "README.txt").write_text("a file, but not an image")
    return root, f"class folder {root / 'val' / 'class2'} is empty"


def _different_classes(tmp):
    root = make_imagefolder(tmp / "d", classes=2, train_per_class=2, val_per_class=1)
    for split, name in (("train", "b"), ("train", "a"), ("val", "c")):
        save(Image.new("RGB", (8, 8)), root / split / name / "x.png")
    return root, "different classes (only in train: a, b; only in val: c)"


@pytest.mark.parametrize("case", [_missing, _no_val, _empty_class, _different_classes])
def test_check_dataset_errors_are_one_line_with_the_fix(tmp_path, case):
    root, expected = case(tmp_path)
    with pytest.raises(ConfigError) as err:
        check_dataset(str(root))
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert "; " in message  # what is wrong; how to fix it


def test_check_dataset_imports_no_torch(data):
    code = ("import sys; from distrib.data.layout import check_dataset; "
            f"assert check_dataset({str(data)!r}) == ['class0', 'class1', 'class2', 'class3']; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_file_list_is_imagefolders(data):
    ref = ImageFolder(str(data / "train"))
    ours = FolderDataset(str(data / "train"), ref.class_to_idx, 32, train=True)
    assert [(ours.read(i)[0], ours.label(i)) for i in range(len(ours))] == ref.samples


# ---------------------------------------------------------------- crops

def _box_stats(boxes, width, height) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)  # left, top, w, h
    return np.stack([b[:, 2] * b[:, 3] / (width * height), np.log(b[:, 2] / b[:, 3]),
                     (b[:, 0] + b[:, 2] / 2) / width, (b[:, 1] + b[:, 3] / 2) / height], axis=1)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.mark.parametrize("size", [(500, 375), (120, 400)])
def test_crop_box_distribution_is_random_resized_crops(size):
    width, height = size
    n = 20_000
    rng = random.Random(0)
    ours = _box_stats([images.rrc_box(width, height, rng) for _ in range(n)], width, height)
    torch.manual_seed(0)
    dummy = torch.empty(1, height, width)
    params = [transforms.RandomResizedCrop.get_params(dummy, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]
    ref = _box_stats([(j, i, w, h) for i, j, h, w in params], width, height)
    for k, name in enumerate(["area fraction", "log aspect", "centre x", "centre y"]):
        assert abs(ours[:, k].mean() - ref[:, k].mean()) < 0.01, name
        assert _ks(ours[:, k], ref[:, k]) < 0.02, name  # two-sample KS, critical value ~0.0195 at 1e-3


def test_rrc_box_with_log_uniform_aspect_is_what_the_check_catches():
    # The statistical test above must be able to fail: a uniform (not log-uniform) aspect ratio fails it.
    rng = random.Random(1)
    uniform = [math.log(rng.uniform(3 / 4, 4 / 3)) for _ in range(20_000)]
    log_uniform = [rng.uniform(math.log(3 / 4), math.log(4 / 3)) for _ in range(20_000)]
    assert _ks(np.array(uniform), np.array(log_uniform)) > 0.03


@pytest.fixture(scope="module")
def square_jpeg(tmp_path_factory) -> tuple[str, tuple[int, int, int, int]]:
    """1600x1200 black JPEG with a white 200x200 square at (900, 500)."""
    pixels = np.zeros((1200, 1600, 3), np.uint8)
    pixels[500:700, 900:1100] = 255
    path = save(Image.fromarray(pixels), tmp_path_factory.mktemp("big") / "square.jpg", quality=95)
    return path, (900, 500, 200, 200)


def _centroid(chw: torch.Tensor) -> tuple[float, float]:
    weight = chw.float().mean(0)
    ys, xs = torch.meshgrid(torch.arange(weight.shape[0]), torch.arange(weight.shape[1]), indexing="ij")
    return float((weight * xs).sum() / weight.sum()), float((weight * ys).sum() / weight.sum())


@pytest.mark.parametrize("box,scale", [((700, 300, 600, 600), 8), ((813, 411, 377, 301), 4),
                                       ((851, 449, 211, 290), 2), ((880, 480, 250, 250), 2)])
def test_reduced_scale_decoding_keeps_the_box(square_jpeg, box, scale):
    path, _ = square_jpeg
    with images.open_image(path) as src:  # the scale really is reduced for these boxes...
        assert images.decode(src, shrink=min(box[2:]) / 64)[1] == scale
    ours = images.resized_crop(path, 64, lambda w, h: box)
    left, top, w, h = box
    ref = TF.pil_to_tensor(TF.resized_crop(Image.open(path).convert("RGB"), top, left, h, w, [64, 64], antialias=True))
    # ...and the square lands where a full-size decode puts it: < half an output pixel.
    (ox, oy), (rx, ry) = _centroid(ours), _centroid(ref)
    assert abs(ox - rx) < 0.5 and abs(oy - ry) < 0.5
    assert (ours.float() - ref.float()).abs().mean() < 8


def test_draft_only_for_jpeg(tmp_path):
    img = class_image(1, 4, (400, 300), np.random.default_rng(0))
    for name, scale in (("a.jpg", 4), ("a.png", 1)):
        with images.open_image(save(img, tmp_path / name)) as src:
            pixels, s = images.decode(src, shrink=5.0)
        assert s == scale and pixels.shape == (3, 300 // scale, 400 // scale)


@pytest.mark.parametrize("name,size,image_size", [("val.png", (50, 37), 32), ("val.jpg", (37, 50), 32),
                                                  ("big.jpg", (1200, 900), 64)])
def test_val_transform_is_resize_then_centre_crop(tmp_path, name, size, image_size):
    path = save(class_image(2, 4, size, np.random.default_rng(1)), tmp_path / name, quality=95)
    ref_tf = transforms.Compose([transforms.Resize(int(image_size / 0.875)), transforms.CenterCrop(image_size),
                                 transforms.PILToTensor()])
    ref = ref_tf(Image.open(path).convert("RGB"))
    ours = images.load_val(path, image_size)
    assert ours.dtype == torch.uint8 and ours.shape == ref.shape == (3, image_size, image_size)
    assert (ours.float() - ref.float()).abs().mean() < (1 if "big" not in name else 4)


def test_train_crop_equals_torchvision_for_the_same_box(tmp_path):
    path = save(class_image(3, 4, (300, 200), np.random.default_rng(2)), tmp_path / "a.png")
    torch.manual_seed(0)
    pil = Image.open(path).convert("RGB")
    for _ in range(5):
        i, j, h, w = transforms.RandomResizedCrop.get_params(pil, [0.08, 1.0], [3 / 4, 4 / 3])
        ref = TF.pil_to_tensor(TF.resized_crop(pil, i, j, h, w, [48, 48], antialias=True))
        ours = images.resized_crop(path, 48, lambda width, height: (j, i, w, h))
        assert (ours.float() - ref.float()).abs().mean() < 1


def test_train_sample_is_a_random_resized_crop_flipped_half_the_time(tmp_path):
    path = save(class_image(1, 4, (60, 45), np.random.default_rng(3)), tmp_path / "a.png")
    flips = 0
    for k in range(200):
        rng, replay = random.Random(k), random.Random(k)
        out = images.load_train(path, 24, rng)
        box = images.rrc_box(60, 45, replay)
        crop = images.resized_crop(path, 24, lambda w, h: box)
        flip = replay.random() < 0.5
        assert torch.equal(out, crop.flip(2) if flip else crop)
        flips += flip and not torch.equal(crop, crop.flip(2))
    assert 70 < flips < 130


# ---------------------------------------------------------------- tensors

def test_batches_are_uint8_and_normalised_on_the_device(data):
    loaders = build_loaders(config(data), dist_env(), pin_memory=False)
    batch = epoch_batches(loaders, 0)[0]
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (8, 3, 32, 32)
    assert batch.labels.dtype == torch.int64 and batch.labels.shape == (8,) and batch.skipped == []
    ref = transforms.Normalize(MEAN, STD)(batch.images.float() / 255)
    for channels_last in (False, True):
        x, y = to_device(batch, torch.device("cpu"), channels_last)
        assert x.dtype == torch.float32 and torch.allclose(x, ref, atol=1e-5) and torch.equal(y, batch.labels)
        assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_loader_settings(data):
    loaders = build_loaders(config(data, workers=2), dist_env(), pin_memory=True)
    for loader in (loaders.train, loaders.val):
        assert loader.num_workers == 2 and loader.persistent_workers and loader.pin_memory
        assert loader.prefetch_factor >= 2
        # workers come from a fork server, never forked from a rank that has gloo/OpenMP threads
        assert loader.multiprocessing_context.get_start_method() == "forkserver"
    assert loaders.train.drop_last and not loaders.val.drop_last
    assert (loaders.num_train, loaders.num_val) == (96, 29) and loaders.classes == check_dataset(str(data))
    assert len(loaders.train) == 96 // 8 and len(loaders.train_sampler) == 96


LONG_TMPDIR_WORKERS = """
import os, sys
import torch
from torch.utils.data import DataLoader
from distrib.data import workers
loader = DataLoader(list(range(8)), batch_size=4, num_workers=2, **workers.loader_options(2))
assert [b.tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]
print(os.listdir(os.environ["TMPDIR"]))
"""


def test_loader_workers_start_under_a_long_tmpdir(tmp_path):
    """Cluster jobs get TMPDIRs like /scratch/<user>/job-<id>/...: the fork server's socket path must still
    fit AF_UNIX's 107 bytes, and nothing is left behind in TMPDIR."""
    tmpdir = tmp_path / ("scratch-" + "x" * (100 - len(str(tmp_path))))
    tmpdir.mkdir()
    proc = subprocess.run([sys.executable, "-c", LONG_TMPDIR_WORKERS], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONPATH": str(Path(__file__).parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------- determinism

def test_augmentation_does_not_depend_on_workers_but_on_the_epoch(data):
    serial = build_loaders(config(data, workers=0), dist_env(), pin_memory=False)
    parallel = build_loaders(config(data, workers=2), dist_env(), pin_memory=False)
    for epoch in (0, 1):  # epoch 1 reaches the persistent workers through the sampler
        a, b = epoch_batches(serial, epoch), epoch_batches(parallel, epoch)
        assert len(a) == len(b) == 12
        for x, y in zip(a, b):
            assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    dataset = serial.train.dataset
    order = parallel.train_sampler.order(1)[:8]
    assert torch.equal(b[0].images, torch.stack([dataset[(i, 1)][0] for i in order]))  # the epoch got through
    changed = sum(not torch.equal(dataset[(i, 0)][0], dataset[(i, 1)][0]) for i in range(20))
    assert changed >= 18  # a new epoch draws new crops (and flips)
    again = build_loaders(config(data, workers=0), dist_env(), pin_memory=False)
    assert all(torch.equal(x.images, y.images) for x, y in zip(epoch_batches(serial, 0), epoch_batches(again, 0)))


# ---------------------------------------------------------------- sharding

@pytest.mark.parametrize("world", [1, 2, 3, 4, 5, 7])
def test_val_shards_cover_the_val_set_exactly_once(data, world):
    assert sum((list(ValSampler(29, r, world)) for r in range(world)), []) == list(range(29))
    labels = collections.Counter()
    for rank in range(world):
        loaders = build_loaders(config(data), dist_env(rank, world), pin_memory=False)
        for batch in loaders.val:
            labels.update(batch.labels.tolist())
    assert labels == collections.Counter(ImageFolder(str(data / "val")).targets)


@pytest.mark.parametrize("n,world", [(96, 1), (96, 4), (29, 3), (101, 2), (101, 7)])
def test_train_shards_are_distributed_samplers(n, world):
    shards = []
    for rank in range(world):
        ours = TrainSampler(n, rank, world, batch_size=1, seed=7)
        ref = DistributedSampler(range(n), world, rank, shuffle=True, seed=7, drop_last=True)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == [(i, epoch) for i in ref]
        shards.append({i for i, _ in ours})
    assert len(set.union(*shards)) == sum(len(s) for s in shards) == n // world * world


def test_start_batch_skips_exactly_k_batches():
    sampler = TrainSampler(101, rank=1, world_size=3, batch_size=4, seed=0)
    sampler.set_epoch(2)
    full = list(sampler)
    assert len(full) == len(sampler) == 33 // 4 * 4 == sampler.batches_per_epoch * 4
    assert full == [(i, 2) for i in sampler.order(2)[:32]]
    for k in range(sampler.batches_per_epoch + 1):
        sampler.set_epoch(2, start_batch=k)
        assert list(sampler) == full[4 * k:] and len(sampler) == len(full) - 4 * k
    with pytest.raises(ValueError):
        sampler.set_epoch(2, start_batch=9)


def test_resumed_epoch_sees_the_same_batches(data):
    loaders = build_loaders(config(data), dist_env(1, 2), pin_memory=False)
    full = epoch_batches(loaders, 4)
    resumed = epoch_batches(loaders, 4, start_batch=2)
    assert len(loaders.train) == len(full) - 2 == len(resumed)
    for x, y in zip(full[2:], resumed):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)


def test_steps_per_epoch_caps_the_epoch(data):
    loaders = build_loaders(config(data, steps_per_epoch=3), dist_env(), pin_memory=False)
    assert len(loaders.train) == 3 and len(epoch_batches(loaders, 0)) == 3


def test_too_little_data_for_one_batch_is_a_config_error(data):
    with pytest.raises(ConfigError, match="lower --batch-size"):
        build_loaders(config(data, batch_size=64), dist_env(0, 2), pin_memory=False)


# ---------------------------------------------------------------- bad files

def test_bad_files_are_skipped_and_named(tmp_path):
    root = make_imagefolder(tmp_path / "d")
    big = save(class_image(0, 4, (256, 256), np.random.default_rng(0)), root / "train" / "class0" / "big.jpg")
    bad = {corrupt_file(big, "truncated"): "corrupt or truncated image",
           corrupt_file(root / "train" / "class1" / "0003.jpg", "empty"): "empty file (0 bytes)",
           corrupt_file(root / "train" / "class2" / "0004.jpg", "text"): "not an image PIL can identify",
           corrupt_file(root / "train" / "class3" / "0005.jpg", "garbage"): "not an image PIL can identify",
           corrupt_file(root / "val" / "class1" / "0000.jpg", "text"): "not an image PIL can identify"}
    loaders = build_loaders(config(root, workers=2, batch_size=97), dist_env(), pin_memory=False)
    skipped = []
    for loader in (loaders.train, loaders.val):
        for batch in loader:
            skipped += batch.skipped
            assert len(batch.labels) == len(batch.images)
    got = dict(s.split(": ", 1) for s in skipped)
    assert set(got) == {str(p) for p in bad}
    for path, reason in bad.items():
        assert got[str(path)].startswith(reason), got[str(path)]


def test_a_batch_of_only_bad_files_comes_out_empty(tmp_path):
    root = make_imagefolder(tmp_path / "d", classes=2, train_per_class=4, val_per_class=1)
    for f in (root / "train").rglob("*.jpg"):
        corrupt_file(f, "empty")
    loaders = build_loaders(config(root, batch_size=4), dist_env(), pin_memory=False)
    batches = epoch_batches(loaders, 0)
    assert len(batches) == 2
    for batch in batches:
        assert batch.images.shape == (0, 3, 32, 32) and batch.labels.shape == (0,) and len(batch.skipped) == 4
        x, y = to_device(batch, torch.device("cpu"), channels_last=False)
        assert x.shape == (0, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (0,)
    assert Collate(32)([Skipped("a: b")]).skipped == ["a: b"]


def test_decompression_bombs_are_skipped_not_disabled(tmp_path, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS is not None  # importing distrib did not switch PIL's guard off
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = make_imagefolder(tmp_path / "d", classes=1, train_per_class=2, val_per_class=0, size=20)
    warn = save(Image.new("RGB", (40, 40)), root / "val" / "class0" / "warn.png")      # PIL: warning only
    error = save(Image.new("RGB", (100, 60)), root / "val" / "class0" / "error.png")  # PIL: error
    val = FolderDataset(str(root / "val"), {"class0": 0}, 16, train=False)
    reasons = sorted(val[i].reason for i in range(len(val)) if isinstance(val[i], Skipped))
    assert reasons == [f"{error}: decompression bomb: 100 x 60 pixels exceeds PIL's limit of 1000",
                       f"{warn}: decompression bomb: 40 x 40 pixels exceeds PIL's limit of 1000"]


# ---------------------------------------------------------------- modes

def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _halves(size, first, second) -> Image.Image:
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[:, : size[0] // 2], pixels[:, size[0] // 2:] = first, second
    return Image.fromarray(pixels)


def test_every_mode_loads_as_rgb(tmp_path):
    palette = Image.new("P", (40, 30), 1)
    palette.putpalette([0, 0, 0, 200, 10, 100] + [0] * 762)
    sixteen = np.full((30, 40), 257 * 100, np.uint16)
    sixteen[:, :20] = 65535
    cases = {
        "gray.png": (Image.new("L", (40, 30), 77), {}, (77, 77, 77)),
        "gray.jpg": (Image.new("L", (40, 30), 77), {"quality": 95}, (77, 77, 77)),
        "rgba.png": (Image.new("RGBA", (40, 30), (10, 200, 30, 0)), {}, (10, 200, 30)),
        "palette.png": (palette, {}, (200, 10, 100)),
        "cmyk.jpg": (Image.new("RGB", (40, 30), (200, 50, 30)).convert("CMYK"), {"quality": 95}, (200, 50, 30)),
    }
    for name, (img, kw, rgb) in cases.items():
        out = images.load_val(save(img, tmp_path / name, **kw), 16)
        assert out.shape == (3, 16, 16) and out.dtype == torch.uint8, name
        assert (out.float().mean((1, 2)) - torch.tensor(rgb)).abs().max() <= 3, name
    path = save(Image.fromarray(sixteen), tmp_path / "sixteen.png")
    assert Image.open(path).mode.startswith("I")
    out = images.resized_crop(path, 40, lambda w, h: (0, 0, w, h))
    assert (out[:, :, :15] == 255).all() and (out[:, :, 25:] == 100).all()


@pytest.mark.parametrize("stored", [(60, 30), (800, 400)])  # full-size decode, and 1/4 scale with draft
def test_exif_orientation_is_applied(tmp_path, stored):
    path = save(_halves(stored, (255, 0, 0), (0, 0, 255)), tmp_path / "rotated.jpg", exif=_exif(6), quality=95)
    seen = []
    out = images.resized_crop(path, 16, lambda w, h: seen.append((w, h)) or (0, 0, w, h))
    assert seen == [(stored[1], stored[0])]  # orientation 6 is a quarter turn: width and height swap
    top, bottom = out[:, :6].float().mean((1, 2)), out[:, 10:].float().mean((1, 2))
    assert top[0] > 200 and top[2] < 50 and bottom[2] > 200 and bottom[0] < 50  # stored left is now on top


# ---------------------------------------------------------------- synthetic

def test_synthetic_data_needs_no_disk():
    loaders = build_loaders(RunConfig(synthetic=True, image_size=16, batch_size=64, workers=0), dist_env(),
                            pin_memory=False)
    assert loaders.classes == [f"class{i}" for i in range(10)]
    assert (loaders.num_train, loaders.num_val, len(loaders.train)) == (2560, 512, 40)
    batch = next(iter(loaders.train))
    assert batch.images.shape == (64, 3, 16, 16) and batch.images.dtype == torch.uint8
    assert batch.labels.max() < 10 and batch.skipped == []
    ds = SyntheticDataset(10, 16, split=0)
    assert torch.equal(ds[(5, 0)][0], ds[(5, 3)][0]) and not torch.equal(ds[5][0], ds[6][0])
    counts = [len(build_loaders(RunConfig(synthetic=True, batch_size=8, workers=0), dist_env(r, 3),
                                pin_memory=False).val.sampler) for r in range(3)]
    assert sum(counts) == 512
