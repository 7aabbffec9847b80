"""distrain export: each format loads back and agrees with the checkpoint; model.json says how to feed it;
an ONNX export predicts without torch; safetensors loads into plain torchvision."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import TINY, assert_ok, distrain

from distrib import checkpoint
from distrib.data.images import load_val
from distrib.data.layout import is_image_file

FORMATS = {"safetensors": "model.safetensors", "onnx": "model.onnx", "torch-export": "model.pt2"}
EXACT = ("safetensors", "torch-export")  # run by torch itself: logits identical to the checkpoint's


@pytest.fixture(scope="module")
def exports(trained_checkpoint, imagefolder, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("exports")
    for fmt in FORMATS:
        proc = distrain("export", "--checkpoint", trained_checkpoint, "--format", fmt, "--output", root / fmt,
                        "--sample", imagefolder / "val")
        assert_ok(proc)
        assert "largest logit difference" in proc.stdout and "top-1 identical on 29/29" in proc.stdout
    return {fmt: root / fmt for fmt in FORMATS}


@pytest.fixture(scope="module")
def reference(trained_checkpoint, imagefolder):
    """The checkpoint's own model on the val images (eval's preprocessing): uint8 batch and logits."""
    ckpt = checkpoint.load(str(trained_checkpoint))
    model = torchvision.models.get_model(ckpt["arch"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    paths = sorted(str(p) for p in (imagefolder / "val").rglob("*") if is_image_file(p.name))
    pre = ckpt["preprocessing"]
    images = torch.stack([load_val(p, pre["crop_size"], pre["resize_size"]) for p in paths])
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        logits = model.eval()((images.float() - mean) / std)
    return ckpt, paths, images, (images.float() - mean) / std, logits


@pytest.fixture(scope="module")
def graph_logits(reference) -> torch.Tensor:
    """The checkpoint's model on the val images normalised as the exported graphs do it (model.json: uint8 in,
    (x - 255 mean) * 1 / (255 std) inside): what torch-export must give bit for bit."""
    ckpt, _, images, _, _ = reference
    pre = ckpt["preprocessing"]
    mean = torch.tensor([m * 255 for m in pre["mean"]]).view(1, 3, 1, 1)
    inv_std = torch.tensor([1 / (s * 255) for s in pre["std"]]).view(1, 3, 1, 1)
    model = torchvision.models.get_model(ckpt["arch"], num_classes=ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    with torch.no_grad():
        return model.eval()((images.float() - mean) * inv_std)


def run_export(folder: Path, images, normalised) -> torch.Tensor:
    meta = json.loads((folder / "model.json").read_text())
    path = str(folder / meta["file"])
    with torch.no_grad():
        if meta["format"] == "onnx":
            import onnxruntime

            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            return torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
        if meta["format"] == "torch-export":
            return torch.export.load(path).module()(images)
        from safetensors.torch import load_file

        model = torchvision.models.get_model(meta["arch"], num_classes=meta["num_classes"])
        model.load_state_dict(load_file(path))
        return model.eval()(normalised)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_export_agrees_with_the_checkpoint_and_model_json_round_trips(exports, reference, graph_logits,
                                                                      trained_checkpoint, fmt):
    ckpt, _, images, normalised, want = reference
    if fmt == "torch-export":
        want = graph_logits  # the same arithmetic as the graph's, so any difference is the export's
    folder = exports[fmt]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.json", FORMATS[fmt]])
    got = run_export(folder, images, normalised)
    assert torch.equal(got.argmax(1), want.argmax(1))               # top-1 identical on every val image
    diff = (got - want).abs().max().item()
    if fmt in EXACT:  # the same weights through the same torch kernels: bit for bit (README: difference 0)
        assert diff == 0, (fmt, diff)
    else:  # onnxruntime's kernels: within export's documented tolerance, 1e-3 of the largest logit
        assert 0 <= diff <= 1e-3 * max(1.0, want.abs().max().item()), (fmt, diff)
    meta = json.loads((folder / "model.json").read_text())
    assert (meta["arch"], meta["num_classes"], meta["classes"]) == (ckpt["arch"], 8, ckpt["classes"])
    assert meta["preprocessing"] == ckpt["preprocessing"]
    assert meta["input"]["size"] == [32, 32] and meta["input"]["layout"] == "NCHW"
    assert meta["input"]["dtype"] == ("float32" if fmt == "safetensors" else "uint8")
    assert meta["source"]["sha256"] == hashlib.sha256(trained_checkpoint.read_bytes()).hexdigest()
    assert meta["check"]["images"] == 29 and meta["check"]["top1_identical"] == 29
    assert (meta["check"]["max_abs_logit_diff"] == 0) == (fmt in EXACT), meta["check"]  # what export measured


def test_exported_graphs_take_any_batch_size(exports, reference):
    _, _, images, normalised, want = reference
    for fmt in ("onnx", "torch-export"):
        for n in (1, 5):
            got = run_export(exports[fmt], images[:n], normalised[:n])
            assert got.shape == (n, 8) and torch.allclose(got, want[:n], atol=1e-3)


def test_safetensors_loads_into_plain_torchvision_without_distrain(exports, reference):
    _, _, _, normalised, want = reference
    code = (
        "import json, sys, torch, torchvision\n"
        "from safetensors.torch import load_file\n"
        f"folder = {str(exports['safetensors'])!r}\n"
        "meta = json.load(open(folder + '/model.json'))\n"
        "model = torchvision.models.get_model(meta['arch'], num_classes=meta['num_classes'])\n"
        "model.load_state_dict(load_file(folder + '/model.safetensors'))\n"
        "x = torch.load(sys.argv[1])\n"
        "print(json.dumps(model.eval()(x).argmax(1).tolist()))\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('distrib', 'launch')]\n")
    saved = exports["safetensors"].parent / "inputs.pt"
    torch.save(normalised, saved)
    proc = subprocess.run([sys.executable, "-c", code, str(saved)], capture_output=True, text=True,
                          cwd="/", env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == want.argmax(1).tolist()


def test_predict_from_onnx_export_never_imports_torch(exports, reference, tmp_path):
    ckpt, paths, _, _, want = reference
    out = tmp_path / "onnx.csv"
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now fails: proof that none happens\n"
        "sys.argv = ['distrain'] + sys.argv[1:]\n"
        "from launch.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert not [m for m in sys.modules if m.startswith('torch') and sys.modules[m] is not None]\n")
    proc = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(exports["onnx"]),
                           str(Path(paths[0]).parents[1]), "--topk", "2", "--output", str(out), "--gpus", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == paths
    # PIL's resize instead of torch's (~0.01 grey levels apart): the same top-1 on every val image
    assert [r["class1"] for r in rows] == [ckpt["classes"][i] for i in want.argmax(1).tolist()]


def test_predict_takes_the_onnx_file_as_well_as_its_folder(exports, reference, tmp_path):
    """`--model EXPORT/model.onnx`, the file a user sees, reads the export of its folder."""
    by_folder, by_file = tmp_path / "folder.csv", tmp_path / "file.csv"
    image = reference[1][0]
    for model, out in ((exports["onnx"], by_folder), (exports["onnx"] / "model.onnx", by_file)):
        assert_ok(distrain("predict", "--model", model, image, "--output", out, "--gpus", "0"))
    assert by_file.read_text() == by_folder.read_text()


@pytest.mark.parametrize("args, message", [
    (["--procs", "2"], "--procs 2 does not apply to --model"),
    (["--gpus", "2"], "runs one onnxruntime session on one GPU; use --gpus 1"),
    (["--gpus", "1"], "needs onnxruntime-gpu"),  # this machine's onnxruntime is the CPU build
])
def test_predict_from_an_export_takes_gpus_and_procs_as_meant(exports, reference, args, message):
    proc = distrain("predict", "--model", exports["onnx"], reference[1][0], *args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.all, proc.all
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("fmt", EXACT)
def test_an_export_folder_fine_tunes_through_launch(fmt, exports, reference, imagefolder, tmp_path):
    """The README's export -> fine-tune path: `launch --weights EXPORT_DIR --freeze-backbone`, one real rank
    reading the folder; the backbone it trains from is the exported one, bit for bit."""
    run_dir = tmp_path / "tuned"
    proc = distrain("launch", "--gpus", "0", "--data", imagefolder, "--weights", exports[fmt], "--freeze-backbone",
                    "--epochs", "1", "--steps-per-epoch", "1", "--run-dir", run_dir, *TINY)
    assert_ok(proc)
    assert "replacing classifier" not in proc.stdout  # 8 classes in the file and in the data: the head is kept
    exported = reference[0]["model"]  # the checkpoint's weights, which the export holds (compared above)
    tuned = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in exported if not k.startswith("fc.")]
    assert any(k.endswith("running_var") for k in backbone)
    assert [k for k in backbone if not torch.equal(tuned[k], exported[k])] == []
    assert not torch.equal(tuned["fc.weight"], exported["fc.weight"])  # the head trained


def test_export_refuses_a_folder_that_is_not_empty(trained_checkpoint, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    proc = distrain("export", "--checkpoint", trained_checkpoint, "--format", "onnx", "--output", tmp_path / "x")
    assert proc.returncode == 2 and "is not an empty folder" in proc.stderr, proc.all
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]


def test_cli_format_list_is_distrib_export_formats():
    from distrib.tools.export import FORMATS as DISTRIB_FORMATS
    from launch.model_tools import EXPORT_FORMATS

    assert tuple(DISTRIB_FORMATS) == EXPORT_FORMATS
