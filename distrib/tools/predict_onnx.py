"""`distrain predict --model DIR`: an ONNX export on onnxruntime, with numpy and PIL only: never torch.

For a machine that only classifies images (`pip install "distrain[onnx]"`, no torch needed at run time).
The export's graph normalises (distrib/tools/export.py), so this only decodes, resizes and crops, with the
geometry of eval's images.load_val (the same JPEG draft scale, the same resize and crop boxes) and PIL's
antialiased bilinear resize instead of torch's (they differ by ~0.01 grey levels on average).
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

from distrib.config import ConfigError
from distrib.data.image_files import _to_rgb, exif_orientation, open_image, skip_reason, upright_size, val_geometry
from distrib.export_format import read_model_json
from distrib.preprocess import Preprocessing
from distrib.tools import predict_io


def read_export(folder: str) -> dict:
    """model.json of an ONNX export, checked: what `--model` needs, or one line saying what is wrong."""
    return read_model_json(folder, ("onnx",), f"--model {folder} has no model.json; give a folder written by "
                           "`distrain export --format onnx`", f"--model {folder} is a {{format}} export; predict "
                           "--model runs ONNX exports (distrain export --format onnx), or use --checkpoint")


def load_pixels(path: str, pre: Preprocessing) -> np.ndarray:
    """3 x crop x crop uint8: shorter side to resize_size, centre crop (eval's geometry, in PIL)."""
    with open_image(path) as src:
        img = src.img
        width, height = upright_size(img)
        new_w, new_h, left, top = val_geometry(width, height, pre.crop_size, pre.resize_size)
        shrink = min(width / new_w, height / new_h)
        s = next((s for s in (8, 4, 2) if s <= shrink), 1)
        if s > 1:  # libjpeg's DCT scaling, as images.decode does it
            result = img.draft("RGB", (img.width // s, img.height // s))
            s = round(img.width / result[1][2]) if result else 1
        if exif_orientation(img) != 1:
            img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)  # 16-bit, palette, CMYK ... as the torch path converts them
        img = img.crop((0, 0, round(width / s), round(height / s)))  # the decoded image, no padding
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
        img = img.crop((left, top, left + pre.crop_size, top + pre.crop_size))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def providers(gpus: int | None) -> list[str]:
    """onnxruntime's execution providers for --gpus: None = the best it has (CUDA first when installed),
    0 = the CPU, 1 = CUDA (ConfigError in one line when this onnxruntime has none). One session: one GPU."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if gpus == 0:
        return ["CPUExecutionProvider"]
    if gpus is None:
        return available
    if gpus > 1:
        raise ConfigError(f"--gpus {gpus}: predict --model runs one onnxruntime session on one GPU; use --gpus 1")
    if "CUDAExecutionProvider" not in available:
        raise ConfigError(f"--gpus 1 with --model needs onnxruntime-gpu (this onnxruntime has "
                          f"{', '.join(available)}); pip install onnxruntime-gpu, or use --gpus 0")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def predict(folder: str, meta: dict, paths: list[str], topk: int, batch_size: int,
            gpus: int | None = None) -> list[dict]:
    """meta: the export's model.json (read_export)."""
    import onnxruntime

    pre = Preprocessing.from_dict(meta["preprocessing"])
    session = onnxruntime.InferenceSession(os.path.join(folder, meta["file"]), providers=providers(gpus))
    rows: list[dict] = []
    bar = predict_io.ProgressBar(len(paths))
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch, good, errors = [], [], {}
        for i, p in enumerate(chunk):
            try:
                batch.append(load_pixels(p, pre))
                good.append(i)
            except Exception as e:  # PIL raises many types for broken files: one error row each
                errors[i] = skip_reason(p, e)
        done = {i: predict_io.row(chunk[i], error=why) for i, why in errors.items()}
        if batch:
            logits = session.run(None, {meta["input"]["name"]: np.stack(batch)})[0].astype(np.float64)
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            k = min(topk, probs.shape[1])
            order = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # by logit, as eval: 0.0 probabilities tie
            for i, idx, p in zip(good, order, probs):
                done[i] = predict_io.row(chunk[i], p[idx].tolist(), idx.tolist(), meta["classes"])
        rows += [done[i] for i in range(len(chunk))]
        bar.update(len(chunk))
    bar.close()
    return rows
