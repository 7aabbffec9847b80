"""Training recipes (distrib/recipe/): augmentation, mixing, EMA, accumulation, RA sampling, --recipe.

In-process checks against torchvision's own transforms and hand computations first; then real runs
(torchrun, 2 gloo processes) with every option on, stopped mid-epoch and resumed.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision.transforms.autoaugment as tv_aa
from conftest import TINY, assert_ok, distrain, metrics
from imagefolder import make_imagefolder
from torchvision.transforms import InterpolationMode

from distrib.config import ConfigError, RunConfig, resolve
from distrib.data.samplers import RASampler
from distrib.recipe import augment, mix
from distrib.recipe.augment import Params
from distrib.recipe.ema import ModelEMA, adjusted_decay

CHI2_DF13_P001 = 34.53  # chi-square critical value, 13 degrees of freedom, p = 0.001


# ---------------------------------------------------------------- augmentation

def _torchvision_draws(transform, n: int, monkeypatch) -> list[tuple[str, float]]:
    """The (op, magnitude) torchvision's transform really draws, recorded at its _apply_op."""
    seen = []
    monkeypatch.setattr(tv_aa, "_apply_op", lambda img, op, m, **kw: seen.append((op, m)) or img)
    torch.manual_seed(0)
    img = torch.zeros(3, 8, 8, dtype=torch.uint8)
    for _ in range(n):
        transform(img)
    return seen


def _chi2_two_samples(a: collections.Counter, b: collections.Counter) -> float:
    """Pearson's chi-square statistic of homogeneity for two samples of categories."""
    na, nb = sum(a.values()), sum(b.values())
    stat = 0.0
    for key in set(a) | set(b):
        total = a[key] + b[key]
        for count, n in ((a[key], na), (b[key], nb)):
            expected = total * n / (na + nb)
            stat += (count - expected) ** 2 / expected
    return stat


def _ours(draw, n: int) -> list[tuple[str, float]]:
    rng = random.Random(1)
    return [op for _ in range(n) for op in draw(rng, 8).chains[0]]


def test_trivial_augment_wide_op_choice_matches_torchvision(monkeypatch):
    n = 6000
    theirs = _torchvision_draws(tv_aa.TrivialAugmentWide(), n, monkeypatch)
    ours = _ours(augment.draw_ta_wide, n)
    ops = lambda draws: collections.Counter(op for op, _ in draws)  # noqa: E731
    assert set(ops(ours)) == set(ops(theirs)) and len(ops(ours)) == 14
    assert _chi2_two_samples(ops(ours), ops(theirs)) < CHI2_DF13_P001
    # every (op, magnitude) we draw is one of torchvision's bins, signs included, and both signs occur
    space = tv_aa.TrivialAugmentWide()._augmentation_space(31)
    for op, m in ours:
        bins, signed = space[op]
        allowed = [float(v) * s for v in bins.flatten() for s in ((1, -1) if signed else (1,))]
        assert min(abs(m - v) for v in allowed) < 1e-4, (op, m)
    assert sum(m < 0 for _, m in ours) > n / 5 and len({m for op, m in ours if op == "Rotate"}) > 40


def test_the_frequency_check_can_fail():
    # The check above must catch a policy that favours one op: the last op twice as likely fails it.
    rng = random.Random(3)
    space = list(augment._space("ta-wide", 8, 31))
    fair = collections.Counter(space[rng.randrange(14)] for _ in range(6000))
    biased = collections.Counter(space[min(rng.randrange(15), 13)] for _ in range(6000))
    assert _chi2_two_samples(fair, biased) > CHI2_DF13_P001


def test_randaugment_and_augmix_draw_torchvision_magnitudes(monkeypatch):
    theirs = _torchvision_draws(tv_aa.RandAugment(), 2000, monkeypatch)
    ours = _ours(augment.draw_randaugment, 1000)
    space = tv_aa.RandAugment()._augmentation_space(31, (8, 8))
    for op, m in ours:
        bins, _ = space[op]
        assert abs(abs(m) - (float(bins[9]) if bins.ndim else 0.0)) < 1e-4, (op, m)
    assert collections.Counter(op for op, _ in theirs).keys() == collections.Counter(op for op, _ in ours).keys()
    assert len(ours) == 2000  # two ops per image
    rng = random.Random(0)
    mixes = [augment.draw_augmix(rng, 8) for _ in range(300)]
    assert all(len(p.chains) == 3 and 1 <= min(map(len, p.chains)) and max(map(len, p.chains)) <= 3 for p in mixes)
    assert all(math.isclose(sum(p.weights), 1.0) for p in mixes)
    assert {op for p in mixes for chain in p.chains for op, _ in chain} == set(augment._space("augmix", 8, 10))


@pytest.mark.parametrize("op", list(augment._space("ta-wide", 32, 31)))
def test_each_op_is_torchvisions(op):
    img = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    bins, signed = augment._space("ta-wide", 32, 31)[op]
    magnitude = -bins[17] if signed else (bins[17] if bins else 0.0)
    expected = tv_aa._apply_op(img, op, magnitude, interpolation=InterpolationMode.BILINEAR, fill=None)
    assert torch.equal(augment.apply(img, Params((((op, magnitude),),))), expected)


def test_random_erasing_fills_the_box_with_the_mean_colour():
    img = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    rng = random.Random(0)
    boxes = [augment.erase_box(rng, 40, 0.5) for _ in range(2000)]
    erased = [b for b in boxes if b]
    assert 0.45 < len(erased) / len(boxes) < 0.55
    areas = [h * w / 1600 for _, _, h, w in erased]
    assert 0.02 - 0.01 < min(areas) and max(areas) < 0.33 + 0.05  # torchvision's scale range, rounded sides
    top, left, h, w = erased[0]
    out = augment.apply(img, Params(erase=erased[0]))
    assert out[:, top:top + h, left:left + w].flatten(1).unique(dim=1).T.tolist() == [list(augment.ERASE_FILL)]
    mask = torch.ones(40, 40, dtype=torch.bool)
    mask[top:top + h, left:left + w] = False
    assert torch.equal(out[:, mask], img[:, mask])


def test_worker_and_device_decode_paths_give_the_same_augmented_images(tmp_path):
    """Same draws, same ops: where both decode at full size (here), the very same pixels."""
    from distrib.data.loaders import build_loaders
    from distrib.runtime.env import DistEnv

    root = make_imagefolder(tmp_path / "d", size=40, train_per_class=4, val_per_class=1)
    for policy in ("ta-wide", "augmix"):
        batches = {}
        for decode in ("workers", "device"):
            cfg = RunConfig(data=str(root), image_size=32, batch_size=8, workers=0, seed=3, decode=decode,
                            device="cpu", auto_augment=policy, random_erase=0.5)
            loaders = build_loaders(cfg, DistEnv(), pin_memory=False)
            loaders.train_sampler.set_epoch(2)
            batches[decode] = list(loaders.train)
        plain = RunConfig(data=str(root), image_size=32, batch_size=8, workers=0, seed=3, device="cpu")
        unaugmented = build_loaders(plain, DistEnv(), pin_memory=False)
        unaugmented.train_sampler.set_epoch(2)
        for w, d, u in zip(batches["workers"], batches["device"], unaugmented.train):
            assert torch.equal(w.labels, d.labels) and torch.equal(w.images, d.images), policy
            assert not torch.equal(w.images, u.images)  # the policy did something


# ---------------------------------------------------------------- mixing

def test_mixup_blends_and_targets_sum_to_one():
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    mixer = mix.Mixer({"mixup": 0.2}, num_classes=4, smoothing=0.1, seed=0)
    out, targets = mixer(images, labels, (5, 0, 1))
    assert torch.allclose(targets.sum(1), torch.ones(6))
    lam = float(targets[0, 0] - 0.1 / 4) / 0.9 if labels[5] != 0 else None  # image 0 pairs with image 5 (roll)
    assert lam is not None and torch.allclose(out, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-5)
    again, _ = mixer(images, labels, (5, 0, 1))
    other, _ = mixer(images, labels, (6, 0, 1))
    assert torch.equal(out, again) and not torch.equal(out, other)  # keyed by (seed, step, rank) alone


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area():
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    mixer = mix.Mixer({"cutmix": 1.0}, num_classes=4, smoothing=0.0, seed=0)
    for step in range(20):
        out, targets = mixer(images, labels, (step, 0, 0))
        assert torch.allclose(targets.sum(1), torch.ones(4))
        inside = (out != images).any(dim=(0, 1))  # where the pasted neighbour shows
        assert torch.equal(out[:, :, inside], images.roll(1, 0)[:, :, inside])
        if inside.any():
            rows, cols = inside.nonzero().unbind(1)
            box = torch.zeros_like(inside)
            box[rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
            assert torch.equal(box, inside)  # one rectangle
        assert float(targets[0, 0]) == pytest.approx(1 - inside.float().mean().item(), abs=1e-6)


def test_one_of_mixup_and_cutmix_per_batch():
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    mixer = mix.Mixer({"mixup": 0.2, "cutmix": 1.0}, num_classes=4, smoothing=0.0, seed=0)
    kinds = collections.Counter()
    for step in range(200):
        out, _ = mixer(images, labels, (step, 0, 0))
        changed = (out != images).any(dim=(0, 1))
        kinds["cutmix" if not changed.all() or torch.equal(out, images.roll(1, 0)) else "mixup"] += 1
    assert 60 < kinds["mixup"] < 140, kinds


# ---------------------------------------------------------------- EMA

def test_ema_decay_is_adjusted_as_torchvision_does():
    cfg = RunConfig(synthetic=True, batch_size=128, ema_steps=32, epochs=600, ema_decay=0.99998)
    assert adjusted_decay(cfg, 8) == pytest.approx(1 - 2e-5 * 8 * 128 * 32 / 600)
    assert adjusted_decay(RunConfig(synthetic=True, batch_size=128, accum_steps=2, epochs=600), 4) == \
        pytest.approx(adjusted_decay(cfg, 8))  # accumulation counts in the global batch
    assert adjusted_decay(RunConfig(synthetic=True, epochs=1, ema_decay=0.5), 8) == 0.0  # alpha capped at 1


def test_ema_weights_equal_a_reference_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    decay, every = 0.9, 3
    ema = ModelEMA(model, decay, every, warmup_epochs=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    reference, copy_next = None, True
    for epoch in range(3):
        for i in range(7):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            ema.after_step(model, i, epoch)
            if i % every == 0:
                current = [t.detach().clone() for t in [*model.parameters(), *model.buffers()]]
                if copy_next:  # the first update, and the one after each warmup update, copies (n_averaged 0)
                    reference = current
                else:
                    reference = [(decay * r + (1 - decay) * c).to(r.dtype) for r, c in zip(reference, current)]
                copy_next = epoch < 1
    got = [*ema.module.parameters(), *ema.module.buffers()]
    assert len(got) == len(reference) == 7  # BatchNorm buffers too (use_buffers=True)
    for g, r in zip(got, reference):
        assert g.dtype == r.dtype and torch.allclose(g.float(), r.float(), atol=1e-6)


# ---------------------------------------------------------------- accumulation, sampler, config

def test_accumulating_two_batches_matches_one_batch_twice_as_big():
    """K=2 at batch b and K=1 at 2b, through the real train_one_epoch, on a model without BatchNorm."""
    from distrib.data.datasets import Batch
    from distrib.metrics import NullWriter
    from distrib.runtime.env import DistEnv
    from distrib.runtime.monitor import StepMonitor
    from distrib.runtime.stop import StopRequest
    from distrib.runtime.watchdog import Heartbeat
    from distrib.state import TrainState
    from distrib.train import Loop, train_one_epoch

    torch.manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 4, (32,))

    def run(batch: int, k: int):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 4))
        cfg = RunConfig(synthetic=True, batch_size=batch, accum_steps=k, epochs=1, optimizer="adamw", lr=0.01,
                        amp="off", channels_last=False, label_smoothing=0.1, clip_grad_norm=0.5)
        steps = 32 // (batch * k)
        state = TrainState.create(model, cfg, 1, steps, torch.device("cpu"))
        loop = Loop(model, cfg, DistEnv(), torch.device("cpu"), steps, None, NullWriter(),
                    StopRequest("/nonexistent/STOP"), Heartbeat(DistEnv(), 60, "/nonexistent"),
                    StepMonitor(0, DistEnv(), torch.device("cpu"), model, steps, 1, k))
        loader = [Batch(images[i:i + batch], labels[i:i + batch], []) for i in range(0, 32, batch)]
        sums, stopped = train_one_epoch(loop, state, loader)
        assert not stopped and state.progress.step == steps
        return torch.cat([p.detach().flatten() for p in model.parameters()]), sums

    accumulated, sums_a = run(8, 2)
    whole, sums_b = run(16, 1)
    assert torch.allclose(accumulated, whole, atol=1e-6), (accumulated - whole).abs().max()
    assert sums_a[1] == sums_b[1] == 32 and float(sums_a[0]) == pytest.approx(float(sums_b[0]), rel=1e-5)


def test_ra_sampler_repeats_across_ranks_with_equal_epochs():
    world, n, reps = 3, 100, 3
    samplers = [RASampler(n, r, world, batch_size=4, seed=7, reps=reps) for r in range(world)]
    for s in samplers:
        s.set_epoch(2)
    drawn = [list(s) for s in samplers]
    assert len({len(d) for d in drawn}) == 1 and len(drawn[0]) == (n // world) // 4 * 4  # same length each rank
    first = [d[0][0] for d in drawn]
    assert len(set(first)) == 1  # one image's 3 copies went to the 3 ranks at the same position
    # one rank, more copies than ranks: each copy still has its own random key
    alone = RASampler(n, 0, 1, batch_size=4, seed=7, reps=2)
    keys = list(alone)[:4]
    assert keys[0][0] == keys[1][0] and keys[0][1] != keys[1][1]
    alone.set_epoch(0, start_batch=1)
    assert list(alone) == [(i, k) for i, k in RASampler(n, 0, 1, 4, 7, reps=2)][4:]  # resumable mid-epoch


def test_recipe_precedence_defaults_recipe_file_command_line(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("epochs = 7\nweight_decay = 0.5\n")
    cfg = resolve({"recipe": "tv-resnet50-v2", "weight_decay": 0.25, "synthetic": True}, str(conf))
    assert (cfg.auto_augment, cfg.image_size, cfg.lr) == ("ta-wide", 176, 0.125)  # the recipe's
    assert cfg.epochs == 7 and cfg.weight_decay == 0.25  # file over recipe, command line over file
    assert cfg.workers == RunConfig().workers  # untouched by the recipe: the default
    with pytest.raises(ConfigError, match="--recipe 'nope' is not one of tv-resnet-v1"):
        resolve({"recipe": "nope", "synthetic": True}).validate()


# ---------------------------------------------------------------- real runs

EVERYTHING = ["--batch-size", "8", "--auto-augment", "ta-wide", "--random-erase", "0.25", "--mixup-alpha", "0.2",
              "--cutmix-alpha", "1.0", "--model-ema", "--ema-steps", "1", "--ema-decay", "0.999",
              "--label-smoothing", "0.1", "--accum-steps", "2", "--optimizer", "adamw", "--lr", "0.004", "--schedule", "cosine",
              "--lr-min", "0.0004", "--warmup-epochs", "0.5", "--ra-reps", "2", "--clip-grad-norm", "5"]
EXACT_KEYS = ("train_loss", "val_loss", "val_acc1", "val_acc5", "val_samples", "lr", "val_ema_acc1",
              "val_ema_acc5", "val_ema_loss")


@pytest.fixture(scope="module")
def everything_run(imagefolder, tmp_path_factory):
    """2 gloo ranks, every recipe option on, 2 epochs of 3 optimizer steps (6 batches of 8, K=2)."""
    run_dir = tmp_path_factory.mktemp("recipes") / "straight"
    proc = distrain("launch", "--gpus", "0", "--procs", "2", "--data", imagefolder, "--epochs", "2",
                    "--run-dir", run_dir, *TINY, *EVERYTHING)
    assert_ok(proc)
    assert "global batch 32 (8 per process x 2 accumulated)" in proc.stdout
    # --ema-decay 0.999, adjusted as torchvision does: 1 - (1 - 0.999) x global batch 32 x 1 step / 2 epochs
    assert "EMA of the weights every 1 steps (decay 0.984 per update)" in proc.stdout, proc.stdout
    return run_dir


def test_stopped_mid_epoch_with_everything_on_resumes_exactly(everything_run, imagefolder, tmp_path):
    run_dir = tmp_path / "stopped"
    run_dir.mkdir()
    (run_dir / "STOP").touch()  # present from the start: every rank stops after the first optimizer step
    options = ["--data", imagefolder, "--epochs", "2", "--run-dir", run_dir, *TINY, *EVERYTHING]
    first = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "launch", "train", "--device", "cpu", *map(str, options)],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.returncode == 0, first.stdout + first.stderr
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 2, 1)  # mid-epoch, after one accumulated step
    assert "model_ema" in ckpt and metrics(run_dir) == []
    proc = distrain("launch", "--gpus", "0", "--procs", "2", *options)
    assert_ok(proc)
    assert "resuming at epoch 1, step 1" in proc.stdout  # one accumulated step (2 batches) was done
    resumed, straight = metrics(run_dir), metrics(everything_run)
    assert [r["epoch"] for r in resumed] == [0, 1]
    for a, b in zip(resumed, straight):
        for key in EXACT_KEYS:
            assert a[key] == pytest.approx(b[key], rel=1e-6), (key, a, b)


def test_ema_is_validated_saved_and_used_by_eval(everything_run, imagefolder):
    rows = metrics(everything_run)
    assert all({"val_ema_acc1", "val_ema_acc5", "val_ema_loss"} <= set(r) for r in rows)
    best = torch.load(everything_run / "checkpoints" / "best.pt", weights_only=True)
    assert best["best_acc1"] == max(r["val_ema_acc1"] for r in rows)  # best.pt is chosen by the EMA
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(everything_run / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("val_ema/acc1")] == pytest.approx([r["val_ema_acc1"] for r in rows])
    last = everything_run / "checkpoints" / "last.pt"
    for flag, key in (([], "val_ema_loss"), (["--no-ema"], "val_loss")):
        proc = distrain("eval", "--checkpoint", last, "--data", imagefolder, "--gpus", "0", "--json",
                        "--workers", "0", *flag)
        assert_ok(proc)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["loss"] == pytest.approx(rows[-1][key], rel=1e-5), (flag, result, rows[-1])


def test_randaugment_and_augmix_train_through_the_cli(imagefolder, tmp_path):
    """`launch --auto-augment randaugment|augmix`: the policy is named in the run's first lines and recorded in
    config.toml, and it reaches the images: the same seeded step trains on other pixels than without it."""
    import tomllib

    losses = {}
    for policy in ("none", "randaugment", "augmix"):
        run_dir = tmp_path / policy
        proc = distrain("launch", "--gpus", "0", "--data", imagefolder, "--epochs", "1", "--steps-per-epoch", "1",
                        "--seed", "0", "--auto-augment", policy, "--run-dir", run_dir, *TINY)
        assert_ok(proc)
        assert (f"training with auto-augment {policy}" in proc.stdout) == (policy != "none"), proc.stdout
        assert tomllib.loads((run_dir / "config.toml").read_text())["auto_augment"] == policy
        losses[policy] = metrics(run_dir)[0]["train_loss"]
    assert len(set(losses.values())) == 3, losses  # each policy changed what the step saw


def test_recipe_lands_in_config_toml_and_the_command_line_wins(tmp_path):
    import tomllib

    run_dir = tmp_path / "run"
    proc = distrain("train", "--recipe", "tv-resnet-v1", "--synthetic", "--arch", "resnet18", "--image-size", "32",
                    "--val-resize-size", "36", "--val-crop-size", "32", "--epochs", "1", "--steps-per-epoch", "1",
                    "--batch-size", "8", "--workers", "0", "--device", "cpu", "--run-dir", run_dir)
    assert_ok(proc)
    config = tomllib.loads((run_dir / "config.toml").read_text())
    assert config["recipe"] == "tv-resnet-v1"
    assert (config["schedule"], config["step_size"], config["weight_decay"], config["momentum"]) == ("step", 30, 1e-4, 0.9)
    assert (config["arch"], config["epochs"], config["batch_size"]) == ("resnet18", 1, 8)  # typed: they win
    assert "recipe tv-resnet-v1: --arch resnet18 --epochs 1 --batch-size 8 --lr 0.1" in proc.stdout


def test_recipes_command_lists_them_with_sources():
    proc = distrain("recipes")
    assert_ok(proc)
    assert "tv-resnet-v1:" in proc.stdout and "tv-resnet50-v2:" in proc.stdout
    assert "--image-size 176" in proc.stdout and "--train-crop-size 176" in proc.stdout  # value and its source
    assert "80.858%" in proc.stdout
    one = distrain("recipes", "tv-resnet-v1")  # `distrain recipes NAME`: that recipe alone
    assert_ok(one)
    assert one.stdout.startswith("tv-resnet-v1:") and "tv-resnet50-v2" not in one.stdout, one.stdout
    assert "--lr 0.1" in one.stdout
    unknown = distrain("recipes", "nope")
    assert unknown.returncode == 2 and unknown.stdout == ""
    assert unknown.stderr.strip() == "error: no recipe 'nope'; the recipes are tv-resnet-v1, tv-resnet50-v2"


def test_the_readmes_recipe_line_dry_runs_as_the_readme_says(imagefolder, tmp_path):
    """The README's tv-resnet50-v2 line, verbatim but for the data, as a dry run on this machine (no GPUs):
    the recipe's options, the learning rate scaled to the global batch, and the note on the published batch."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    line = next(x.strip() for x in readme.splitlines() if x.strip().startswith("distrain launch --recipe tv-resnet50-v2"))
    argv = line.split()[1:]
    argv[argv.index("--data") + 1] = str(imagefolder)
    proc = distrain(*argv, "--dry-run", "--run-dir", tmp_path / "r", cwd=tmp_path)
    assert_ok(proc)
    out = proc.stdout + proc.stderr
    assert "# world size 16: 2 node(s) x 8 cuda process(es)" in out
    assert "# global batch 2048 (128 per process), lr 1 (= 0.125 x 2048/256)" in out
    assert "# recipe tv-resnet50-v2: --arch resnet50 --epochs 600 --batch-size 128 --lr 0.125" in out
    assert "tv-resnet50-v2 was published at global batch 1024" in out
