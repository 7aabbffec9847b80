"""--weights takes the files people have; a file for another arch is refused before launch; fine-tuning
knobs (--freeze-backbone leaves the backbone bit-identical, --head-lr-mult); --pretrained never downloads
on a rank and is refused in one line when offline with nothing cached."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import TINY, assert_ok, distrain

from distrib import weights
from distrib.checkpoint import UnusableCheckpoint
from distrib.config import RunConfig
from distrib.model import build_model, training_loss
from distrib.recipe.param_groups import param_groups


def resnet18_state(num_classes: int = 1000, seed: int = 0) -> dict:
    """A resnet18 state_dict whose BatchNorm statistics are not the defaults (so any update shows)."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(num_classes=num_classes).state_dict()
    for k, v in state.items():
        if k.endswith("running_mean"):
            v.copy_(torch.randn_like(v) * 0.1)
        elif k.endswith("running_var"):
            v.copy_(torch.rand_like(v) + 0.5)
        elif k.endswith("num_batches_tracked"):
            v.fill_(1234)
    return state


def _safetensors(state, path):
    from safetensors.torch import save_file

    save_file(state, str(path))


def _export_folder(state, path):
    path.mkdir()
    _safetensors(state, path / "model.safetensors")
    (path / "model.json").write_text(json.dumps({"format": "safetensors", "file": "model.safetensors"}))


def _torch_export(state, path):
    from distrib.preprocess import Preprocessing
    from distrib.tools.export import Normalized

    net = torchvision.models.resnet18()
    net.load_state_dict(state)
    model = Normalized(net, Preprocessing(resize_size=36, crop_size=32)).eval()
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3, 32, 32, dtype=torch.uint8),)), str(path))


LAYOUTS = {
    "bare.pt": lambda s, p: torch.save(s, p),
    "state_dict.pt": lambda s, p: torch.save({"state_dict": s, "epoch": 3}, p),
    "model.pth": lambda s, p: torch.save({"model": s, "optimizer": {"state": {}}}, p),
    "model_state_dict.tar": lambda s, p: torch.save({"model_state_dict": s}, p),
    "ddp.pt": lambda s, p: torch.save({f"module.{k}": v for k, v in s.items()}, p),
    "compiled.pt": lambda s, p: torch.save({f"_orig_mod.{k}": v for k, v in s.items()}, p),
    "nested.pt": lambda s, p: torch.save({"state_dict": {f"module.{k}": v for k, v in s.items()}}, p),
    "w.safetensors": _safetensors,
    "distrain.pt": lambda s, p: torch.save({"model": s, "arch": "resnet18", "classes": ["a"], "epoch": 1}, p),
    "export-folder": _export_folder,
    "model.pt2": _torch_export,
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_fine_tunes(layout, tmp_path):
    state = resnet18_state()
    path = tmp_path / layout
    LAYOUTS[layout](state, path)
    model = build_model("resnet18", 4, False, str(path))
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert model.fc.out_features == 4  # 1000 -> 4: a new head
    # and it trains: one SGD step moves the new head and lowers nothing to NaN
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    before = model.fc.weight.detach().clone()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.fc.weight)


def test_check_reads_every_layout_as_the_launcher_does(tmp_path):
    """`distrain check --weights` runs the launcher's own reading, the one every launch does before it starts
    anything: each layout found, fitted to --arch, its classifier named (the ranks' reading is the one above)."""
    state = resnet18_state()
    for layout, make in LAYOUTS.items():
        make(state, tmp_path / layout)
        proc = distrain("check", "--gpus", "0", "--synthetic", "--arch", "resnet18", "--weights",
                        tmp_path / layout, "--run-dir", tmp_path / "run", env={"COLUMNS": "400"})
        assert proc.returncode == 0, (layout, proc.all)
        assert f"{tmp_path / layout} fits --arch resnet18 (classifier fc: 1000 classes" in proc.stdout, proc.all


def test_head_is_kept_when_the_class_count_is_the_same(tmp_path):
    state = resnet18_state(num_classes=4)
    torch.save(state, tmp_path / "w.pt")
    model = build_model("resnet18", 4, False, str(tmp_path / "w.pt"))
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_a_file_that_runs_code_is_refused(tmp_path):
    torch.save({"state_dict": resnet18_state(), "why": RunConfig()}, tmp_path / "pickled.pt")
    with pytest.raises(UnusableCheckpoint, match="refusing"):
        weights.read_state_dict(str(tmp_path / "pickled.pt"))


def test_resnet50_file_for_resnet18_is_refused_before_launch(tmp_path, imagefolder):
    torch.save({"state_dict": torchvision.models.resnet50().state_dict()}, tmp_path / "r50.pt")
    run_dir = tmp_path / "run"
    proc = distrain("launch", "--gpus", "0", "--data", imagefolder, "--arch", "resnet18", "--weights",
                    tmp_path / "r50.pt", "--run-dir", run_dir, "--epochs", "1")
    assert proc.returncode == 2, proc.all
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.all
    assert "does not fit --arch resnet18" in proc.stderr and "unexpected" in proc.stderr
    assert "it fits --arch resnet50" in proc.stderr
    assert not run_dir.exists()  # nothing started


def test_head_lr_mult_and_frozen_parameters_in_the_optimizer_groups():
    model = torchvision.models.resnet18(num_classes=4)
    cfg = RunConfig(synthetic=True, head_lr_mult=10, decay_norm_bias=False)
    groups = param_groups(model, cfg, lr=0.1)
    head = {id(p) for p in model.fc.parameters()}
    for g in groups:
        in_head = {id(p) in head for p in g["params"]}
        assert len(in_head) == 1 and g["lr"] == pytest.approx(1.0 if in_head.pop() else 0.1)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == cfg.weight_decay  # backbone first
    frozen = build_model("resnet18", 4, False, None, freeze_backbone=True)
    groups = param_groups(frozen, replace(cfg, head_lr_mult=1), lr=0.1)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in frozen.fc.parameters()}


def test_freeze_backbone_leaves_it_bit_identical_under_ddp(tmp_path, imagefolder):
    """Two gloo processes (DDP), fine-tuning from a {"state_dict": {"module.…"}} file of 1000 classes."""
    state = resnet18_state()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    run_dir = tmp_path / "run"
    proc = distrain("launch", "--gpus", "0", "--procs", "2", "--data", imagefolder, "--weights", tmp_path / "w.pt",
                    "--freeze-backbone", "--head-lr-mult", "10", "--epochs", "1", "--run-dir", run_dir, *TINY,
                    "--arch", "resnet18")
    assert_ok(proc)
    assert "replacing classifier fc: 1000 -> 8 classes" in proc.stdout
    lr, head = re.search(r"lr (\S+) \(= .*head lr (\S+) \(--head-lr-mult 10\)", proc.stdout).groups()
    assert float(head) == pytest.approx(10 * float(lr))  # the head's lr is printed beside the backbone's
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in state if not k.startswith("fc.")]
    assert any(k.endswith("running_var") for k in backbone)
    changed = [k for k in backbone if not torch.equal(trained[k], state[k])]
    assert not changed, changed[:5]  # weights, BatchNorm statistics and counters: all as loaded
    assert trained["fc.weight"].shape == (8, 512)


def test_pretrained_offline_without_the_file_is_one_line(tmp_path, imagefolder):
    proc = distrain("launch", "--gpus", "0", "--data", imagefolder, "--arch", "resnet18", "--pretrained",
                    "--run-dir", tmp_path / "run", env={"TORCH_HOME": str(tmp_path / "torch")})
    assert proc.returncode == 2, proc.all
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in proc.all
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    assert "resnet18-f37072fd.pth" in line and url in line and str(cache) in line
    assert not (tmp_path / "run").exists()


def test_pretrained_reads_the_cache_the_launcher_checked(tmp_path, imagefolder):
    """Weights placed in TORCH_HOME's cache (as a login node would download them): the rank loads them."""
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    state = resnet18_state(seed=1)
    torch.save(state, cache / "resnet18-f37072fd.pth")
    run_dir = tmp_path / "run"
    proc = distrain("launch", "--gpus", "0", "--data", imagefolder, "--pretrained", "--freeze-backbone",
                    "--epochs", "1", "--steps-per-epoch", "2", "--run-dir", run_dir, *TINY, "--arch", "resnet18",
                    env={"TORCH_HOME": str(tmp_path / "torch")})
    assert_ok(proc)
    assert "replacing classifier fc: 1000 -> 8 classes" in proc.stdout  # the file found, read by the rank
    trained = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert torch.equal(trained["conv1.weight"], state["conv1.weight"])
    assert torch.equal(trained["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])


# Archs whose class scores come from more than the last Linear: auxiliary classifiers (googlenet,
# inception_v3) and a 1x1 convolution (squeezenet).
CLASS_LAYERS = {"googlenet": ["fc", "aux1.fc2", "aux2.fc2"], "inception_v3": ["fc", "AuxLogits.fc"],
                "squeezenet1_1": ["classifier.1"]}


@pytest.mark.parametrize("arch", list(CLASS_LAYERS))
def test_every_class_layer_is_replaced_for_fine_tuning(arch, tmp_path):
    state = weights.skeleton(arch, 1000).to_empty(device="cpu").state_dict()
    model = weights.build_from_state(state, "w.pt", arch, num_classes=4)
    assert weights.class_layers(model) == CLASS_LAYERS[arch]
    for name in CLASS_LAYERS[arch]:
        assert model.get_submodule(name).weight.shape[0] == 4
    # the fine-tuned file (every class layer at 4 rows) fits the arch again: eval, predict, --weights
    assert weights.fit(model.state_dict(), arch).ok
    frozen = build_model(arch, 4, False, None, freeze_backbone=True)
    trained = {name.rpartition(".")[0] for name, p in frozen.named_parameters() if p.requires_grad}
    assert trained == set(CLASS_LAYERS[arch])


def test_auxiliary_classifiers_add_their_weighted_losses():
    """googlenet returns (logits, aux2, aux1) in training mode: the training loss (distrib/train.py and
    bench) is the classifier's loss + 0.3 x each auxiliary one, and every class layer gets a gradient."""
    model = build_model("googlenet", 4, False, None).train()
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 3])
    output = model(images)
    loss = training_loss(output, lambda logits: F.cross_entropy(logits, labels))
    expected = sum(w * F.cross_entropy(o, labels) for w, o in zip((1, 0.3, 0.3), output))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert all(model.get_submodule(name).weight.grad is not None for name in CLASS_LAYERS["googlenet"])
    assert isinstance(model.eval()(images), torch.Tensor)  # validation, export: the logits alone


@pytest.mark.parametrize("args, message", [
    (["--arch", "vit_b_16", "--image-size", "64"], "--arch vit_b_16 trains at --image-size 224 only"),
    (["--arch", "inception_v3"], "--arch inception_v3 trains at --image-size 299 or more"),
])
def test_an_image_size_the_arch_cannot_take_is_refused_before_launch(args, message, tmp_path):
    proc = distrain("launch", "--gpus", "0", "--synthetic", "--run-dir", tmp_path / "run", *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.all, proc.all
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
