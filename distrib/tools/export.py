"""`distrain export`: a checkpoint as a model file another runtime loads, plus model.json saying how to feed it.

    DIR/model.safetensors | model.onnx | model.pt2     the weights or the graph
    DIR/model.json                                     arch, classes, input, preprocessing, source sha256, check

onnx and torch-export take uint8 RGB images, N x 3 x crop x crop (N dynamic), and do the normalisation
inside the graph (Normalized below, the same arithmetic as data.to_device): a runtime only decodes, resizes
and crops. safetensors is the plain torchvision state_dict (no optimizer), so it normalises nothing.
Every file is loaded back right after writing and run next to the checkpoint's model on the same images;
the largest logit difference is printed, and over TOLERANCE it is an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torchvision

from distrib import weights
from distrib.export_format import MODEL_JSON
from distrib.files import temp_path
from distrib.model import from_checkpoint
from distrib.preprocess import Preprocessing

TOLERANCE = 1e-3        # largest logit difference allowed, relative to the largest logit (at least 1)
CHECK_IMAGES = 8        # random images for the check when no --sample is given


class Normalized(nn.Module):
    """uint8 images in, logits out: (x - 255 mean) / (255 std), then the torchvision model."""

    def __init__(self, net: nn.Module, pre: Preprocessing):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor([m * 255 for m in pre.mean]).view(1, 3, 1, 1))
        self.register_buffer("inv_std", torch.tensor([1 / (s * 255) for s in pre.std]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() - self.mean) * self.inv_std)


# ---------------------------------------------------------------- the formats: write, and load back to run

def _write_safetensors(model: Normalized, path: str, example) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, path)


def _load_safetensors(path: str, meta: dict) -> Callable:
    from safetensors.torch import load_file

    net = weights.scratch(meta["arch"], meta["num_classes"])
    net.load_state_dict(load_file(path))
    return Normalized(net, Preprocessing.from_dict(meta["preprocessing"])).eval()


def _dynamic_batch() -> dict:
    return {"images": {0: torch.export.Dim("batch", min=1, max=4096)}}


def _write_onnx(model: Normalized, path: str, example) -> None:
    torch.onnx.export(model, (example,), path, dynamo=True, input_names=["images"], output_names=["logits"],
                      dynamic_shapes=_dynamic_batch(), external_data=False, verbose=False)  # one file


def _load_onnx(path: str, meta: dict) -> Callable:
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(None, {"images": images.numpy()})[0])


def _write_torch_export(model: Normalized, path: str, example) -> None:
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=_dynamic_batch()), path)


def _load_torch_export(path: str, meta: dict) -> Callable:
    return torch.export.load(path).module()


@dataclass(frozen=True)
class Format:
    file: str
    write: Callable
    load: Callable
    normalization: str  # what model.json says a runtime must do about mean/std


IN_GRAPH = "in-graph: feed uint8 RGB pixels after resize and centre crop"
FORMATS = {
    "safetensors": Format("model.safetensors", _write_safetensors, _load_safetensors,
                          "not included: scale pixels to [0, 1], subtract mean, divide by std"),
    "onnx": Format("model.onnx", _write_onnx, _load_onnx, IN_GRAPH),
    "torch-export": Format("model.pt2", _write_torch_export, _load_torch_export, IN_GRAPH),
}


# ---------------------------------------------------------------- export

def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_images(paths: list[str], pre: Preprocessing) -> torch.Tensor:
    """Real images for the check (eval's preprocessing), or a fixed batch of random pixels."""
    from distrib.data.images import load_val

    images = []
    for p in paths[:64]:
        try:
            images.append(load_val(p, pre.crop_size, pre.resize_size))
        except Exception:  # an unreadable sample is just not used
            continue
    if images:
        return torch.stack(images)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (CHECK_IMAGES, 3, pre.crop_size, pre.crop_size), dtype=torch.uint8, generator=g)


def main(ckpt: dict, checkpoint_path: str, fmt: str, output: str, pre: Preprocessing, samples: list[str],
         say=print) -> dict:
    """Write DIR (via a temporary sibling, so a failed export leaves nothing), check it, return model.json.
    ckpt: the checkpoint at checkpoint_path, already loaded (checkpoint.load)."""
    kind = FORMATS[fmt]
    classes = list(ckpt["classes"])
    model = Normalized(from_checkpoint(ckpt), pre).eval()  # the EMA's weights when the run kept one
    meta = {
        "format": fmt, "file": kind.file, "arch": ckpt["arch"], "num_classes": len(classes), "classes": classes,
        "input": {"name": "images", "layout": "NCHW", "channels": "RGB",
                  "dtype": "float32" if fmt == "safetensors" else "uint8",
                  "size": [pre.crop_size, pre.crop_size], "batch": "dynamic"},
        "output": {"name": "logits", "softmax": False},
        "normalization": kind.normalization,
        "preprocessing": pre.as_dict(),
        "source": {"checkpoint": os.path.abspath(checkpoint_path), "sha256": sha256(checkpoint_path),
                   "epochs_trained": ckpt.get("epoch"), "best_acc1": ckpt.get("best_acc1")},
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
    }
    tmp = temp_path(output.rstrip(os.sep))  # a whole folder appears at once: built beside it, then renamed
    os.makedirs(tmp)
    try:
        with torch.no_grad():
            example = torch.zeros(2, 3, pre.crop_size, pre.crop_size, dtype=torch.uint8)  # 2: batch stays dynamic
            kind.write(model, os.path.join(tmp, kind.file), example)
            meta["check"] = check(model, kind.load(os.path.join(tmp, kind.file), meta), check_images(samples, pre))
        with open(os.path.join(tmp, MODEL_JSON), "w") as fh:
            json.dump(meta, fh, indent=1)
        if os.path.isdir(output):
            os.rmdir(output)  # empty (the launcher checked): the rename needs the name free
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c = meta["check"]
    say(f"{fmt}: {os.path.join(output, kind.file)} + model.json; checked on {c['images']} images: largest logit "
        f"difference {c['max_abs_logit_diff']:.3g} (tolerance {c['tolerance']:.3g}), top-1 identical on "
        f"{c['top1_identical']}/{c['images']}")
    return meta


class ExportMismatch(RuntimeError):
    """The written file computes other logits than the checkpoint (shown in one line, exit 1)."""

    user_facing = True


@torch.no_grad()
def check(model: nn.Module, loaded: Callable, images: torch.Tensor) -> dict:
    want = model(images)
    got = loaded(images).float()
    diff = (got - want).abs().max().item()
    tolerance = TOLERANCE * max(1.0, want.abs().max().item())
    top1 = int((got.argmax(1) == want.argmax(1)).sum())
    result = {"images": len(images), "max_abs_logit_diff": diff, "tolerance": tolerance, "top1_identical": top1}
    if not diff <= tolerance:  # (NaN fails too)
        raise ExportMismatch(f"the exported file's logits differ from the checkpoint's by up to {diff:.3g} "
                             f"(tolerance {tolerance:.3g}); nothing was written. Report it with the arch and "
                             "torch version")
    return result
