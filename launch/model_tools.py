"""Commands that use a trained checkpoint (eval, predict, export): read what the checkpoint says about
itself, settle the options against it, and run the tool here or on P processes through torchrun.

The rule (same for every such command): the checkpoint's recorded preprocessing is used unless an option
typed on the command line says otherwise; then the typed value wins, with one warning naming both.
torch is imported only inside these functions, when a checkpoint is really read.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

from distrib import words
from distrib.config import ConfigError, RunConfig, write_run_config
from distrib.data import formats
from distrib.files import write_atomic
from distrib.paths import RunPaths
from distrib.preprocess import Preprocessing
from distrib.runtime.env import cpu_cores
from launch import topology, torchrun
from launch.run_local import rank_failure, run

# option typed by the user -> the Preprocessing field it overrides
PREPROCESSING_OPTIONS = {"image_size": "crop_size", "val_crop_size": "crop_size", "val_resize_size": "resize_size"}


@dataclass(frozen=True)
class ModelRecord:
    """What a distrain checkpoint says about the model in it."""
    path: str
    arch: str
    classes: list[str]
    preprocessing: Preprocessing
    config: dict  # the run's options as trained (batch size, precision, ...)
    checkpoint: dict | None = field(default=None, repr=False)  # the loaded file, for export


def read_checkpoint(path) -> ModelRecord:
    """Load a checkpoint in the launcher (weights_only) and check it is one distrain wrote."""
    path = str(path)
    from distrib import checkpoint  # torch: only now

    ckpt = checkpoint.load(path)
    if not checkpoint.is_run_checkpoint(ckpt):
        raise ConfigError(f"{path} is a bare weights file, not a distrain checkpoint (it records no arch, class "
                          "names or preprocessing); give RUN_DIR/checkpoints/best.pt or last.pt, or fine-tune "
                          "from it with `distrain launch --weights`")
    pre = Preprocessing.of_checkpoint(ckpt) or Preprocessing.from_config(RunConfig(synthetic=True))
    return ModelRecord(path, ckpt["arch"], list(ckpt["classes"]), pre, dict(ckpt.get("config") or {}), ckpt)


def settle_preprocessing(record: ModelRecord, cli: dict, warn) -> Preprocessing:
    """The checkpoint's preprocessing, with what the user typed winning (and named in a warning)."""
    pre = record.preprocessing
    typed = {PREPROCESSING_OPTIONS[k]: v for k, v in cli.items() if k in PREPROCESSING_OPTIONS and v is not None}
    for flag, field in PREPROCESSING_OPTIONS.items():
        if flag in cli and cli[flag] is not None and cli[flag] != getattr(pre, field):
            warn(f"--{words.flag(flag)} {cli[flag]} differs from the checkpoint's {field.replace('_', ' ')} "
                 f"{getattr(pre, field)}; using {cli[flag]} (accuracy will differ from training's)")
    if "crop_size" in typed and "resize_size" not in typed:  # a new crop keeps the checkpoint's ratio
        typed["resize_size"] = max(typed["crop_size"], round(typed["crop_size"] * pre.resize_size / pre.crop_size))
    from dataclasses import replace

    return replace(pre, **typed)


def check_classes(record: ModelRecord, data: str, val_split: float | None, shown: str | None = None) -> None:
    """The data's class folders must be the checkpoint's, in the same order, before anything starts.
    shown: the folder the user named, when `data` is a view of it (eval of class folders without val/)."""
    classes = formats.check(RunConfig(data=data, val_split=val_split))
    if classes != record.classes:
        extra = sorted(set(classes) - set(record.classes))
        missing = sorted(set(record.classes) - set(classes))
        detail = (f"only in the data: {', '.join(extra[:5]) or '-'}; only in the checkpoint: "
                  f"{', '.join(missing[:5]) or '-'}")
        raise ConfigError(f"{shown or data} has {len(classes)} class folders; {record.path} was trained on "
                          f"{len(record.classes)} others ({detail}); give data with the checkpoint's classes")


def max_workers(procs: int) -> int:
    """Loader workers per process that the cores can feed: PyTorch warns past one per core."""
    return max(0, min(4, cpu_cores() // max(procs, 1)))


def check_gpus(gpus: int | None) -> int:
    """GPUs to use: the count asked for must be visible here; None means all visible (maybe 0)."""
    visible = topology.visible_gpus()
    if gpus is not None and gpus > visible:
        raise ConfigError(f"--gpus {gpus} asked for, but {visible} visible here; use --gpus {visible}"
                          + (" (or --gpus 0 for CPU processes)" if visible else " to run on the CPU"))
    return visible if gpus is None else gpus


@contextlib.contextmanager
def scratch_run_dir(tool: str):
    """A temporary run dir for a tool's config, inputs and outputs, removed afterwards whatever happens."""
    run_dir = tempfile.mkdtemp(prefix=f"distrain-{tool}-")
    try:
        yield run_dir
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def run_tool(tool: str, cfg: RunConfig, args: list[str], procs: int, out, run_dir: str | None = None) -> int:
    """Run `python -m distrib TOOL ARGS CONFIG` here (one process) or through torchrun (several); the
    config lives in RUN_DIR (a temporary one, removed afterwards, unless the caller gives its own)."""
    if run_dir is None:
        with scratch_run_dir(tool) as scratch:
            return run_tool(tool, cfg, args, procs, out, scratch)
    paths = RunPaths(run_dir)
    from dataclasses import replace

    cfg = replace(cfg, run_dir=run_dir)
    write_run_config(cfg, paths.config)
    if procs == 1:  # here, in this process: torch is already imported to read the checkpoint
        from distrib.__main__ import run as rank_main

        return rank_main([tool, *args, paths.config])
    argv = torchrun.torchrun_argv(sys.executable, procs, paths.torchrun_logs, [tool, *args, paths.config])
    env = torchrun.rank_env(cfg.device, procs, os.environ)
    code, _ = run(argv, env, paths.stop, say=lambda m: None, stderr_path=paths.torchrun_err)
    if code == 0:
        return 0
    failure = rank_failure(run_dir)
    if failure and failure.bad_input:
        raise ConfigError(failure.message)  # the rank's own line, exit 2
    out.print(f"[red]{tool} failed[/]: {failure or f'torchrun exit {code}'}", soft_wrap=True)
    return 1


# ---------------------------------------------------------------- distrain predict

def predict(inputs: list[str], checkpoint, model_dir, topk: int, output, cli: dict, gpus, procs: int,
            out, warn) -> int:
    """Top-k classes per image: a checkpoint on 1 or P processes (torchrun), or an ONNX export without torch."""
    import json

    from distrib.tools import predict_io

    if (checkpoint is None) == (model_dir is None):
        raise ConfigError("give --checkpoint PATH (a distrain checkpoint) or --model DIR (an ONNX export), "
                          "one of them")
    if topk < 1:
        raise ConfigError(f"--topk {topk} must be at least 1")
    batch_size = cli.get("batch_size", 64)
    RunConfig(synthetic=True, **{**cli, "batch_size": batch_size}, gpus=gpus, procs=procs).validate()
    output = str(output) if output else None
    predict_io.output_format(output)  # a bad --output is found before any image is read
    paths = predict_io.list_inputs([str(p) for p in inputs])
    if model_dir is not None:
        rows = _predict_onnx(str(model_dir), paths, topk, batch_size, cli, gpus, procs)
    else:
        record = read_checkpoint(checkpoint)
        pre = settle_preprocessing(record, cli, warn)
        gpus = check_gpus(gpus)
        nprocs = gpus if gpus > 0 else procs
        cfg = RunConfig(synthetic=True,  # no dataset: the images come from predict-inputs.json
                        arch=record.arch, image_size=pre.crop_size, val_crop_size=pre.crop_size,
                        val_resize_size=pre.resize_size, batch_size=batch_size,
                        workers=cli.get("workers", max_workers(nprocs)), gpus=gpus, procs=procs, resume="never",
                        device="cpu" if gpus == 0 else "cuda").validate()
        with scratch_run_dir("predict") as run_dir:
            run_paths = RunPaths(run_dir)
            write_atomic(run_paths.predict_inputs, paths, as_json=True)
            code = run_tool("predict", cfg, [str(checkpoint), str(topk)], nprocs, out, run_dir=run_dir)
            if code != 0:
                return code
            rows = []
            for rank in range(nprocs):  # contiguous slices: rank order is input order
                with open(run_paths.predictions(rank)) as fh:
                    rows += [json.loads(line) for line in fh]
    predict_io.write(rows, topk, output)
    say = warn if any(r["error"] for r in rows) else (lambda m: print(m, file=sys.stderr))
    say(predict_io.summary(rows, output))  # on stderr: stdout may be the CSV
    return 0


def _predict_onnx(model_dir: str, paths: list[str], topk: int, batch_size: int, cli: dict, gpus: int | None,
                  procs: int) -> list[dict]:
    """onnxruntime, numpy and PIL only: this path never imports torch (tests/test_predict.py checks)."""
    import importlib.util

    from distrib.tools import predict_onnx

    if os.path.isfile(model_dir):  # the .onnx file itself: its folder is the export (model.json beside it)
        model_dir = os.path.dirname(model_dir) or "."
    meta = predict_onnx.read_export(model_dir)
    typed = [k for k in PREPROCESSING_OPTIONS if cli.get(k) is not None]
    if typed:
        raise ConfigError(f"--{words.flag(typed[0])} does not apply to --model: the ONNX graph takes "
                          f"{meta['input']['size'][0]} px crops; re-export with other sizes instead")
    if procs != 1:
        raise ConfigError(f"--procs {procs} does not apply to --model: one onnxruntime process uses every core; "
                          "drop --procs")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ConfigError("predict --model needs onnxruntime: pip install \"distrain[onnx]\"")
    return predict_onnx.predict(model_dir, meta, paths, topk, batch_size, gpus)


# ---------------------------------------------------------------- distrain export

EXPORT_FORMATS = ("safetensors", "onnx", "torch-export")  # distrib/tools/export.py FORMATS (test_export checks)
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")       # torch.onnx.export(dynamo=True) and the check


def _check_export_output(output: str, checkpoint: str) -> bool:
    """--output must be new, empty, or an earlier export of the same checkpoint file (True: replace it);
    an export never mixes with another model's files."""
    if not os.path.exists(output) or (os.path.isdir(output) and not os.listdir(output)):
        return False
    from distrib.export_format import MODEL_JSON

    source = None
    try:
        with open(os.path.join(output, MODEL_JSON)) as fh:
            source = json.load(fh).get("source", {}).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        pass
    if source and os.path.realpath(source) == os.path.realpath(checkpoint):
        return True
    what = f"holds an export of {source}" if source else "exists and is not an empty folder"
    raise ConfigError(f"--output {output} {what}; give a new folder (an export is one folder: the model "
                      "file and model.json of one checkpoint)")


def export(checkpoint, fmt: str, output, samples: list[str], cli: dict, out, warn) -> int:
    """Write OUTPUT/model.* + model.json and check the file against the checkpoint's model."""
    import importlib.util

    RunConfig(synthetic=True, **cli).validate()  # the preprocessing sizes typed
    output = str(output)
    replacing = _check_export_output(output, str(checkpoint))
    missing = [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None] if fmt == "onnx" else []
    if missing:
        raise ConfigError(f"--format onnx needs {', '.join(missing)}: pip install \"distrain[onnx]\"")
    from distrib.tools import predict_io

    sample_paths = predict_io.list_inputs(samples) if samples else []
    record = read_checkpoint(checkpoint)
    pre = settle_preprocessing(record, cli, warn)
    from distrib.tools import export as exporter

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if replacing:  # an earlier export of this same checkpoint file: it is stale now, the new one replaces it
        out.print(f"replacing {output}: an earlier export of {checkpoint}", soft_wrap=True, markup=False)
        shutil.rmtree(output)
    try:
        exporter.main(record.checkpoint, str(checkpoint), fmt, output, pre, sample_paths,
                      say=lambda m: out.print(m, soft_wrap=True, markup=False, highlight=False))
    except exporter.ExportMismatch as e:
        out.print(f"[red]export failed[/]: {e}", soft_wrap=True)
        return 1
    return 0
