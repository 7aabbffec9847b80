"""Commands that use a trained checkpoint (eval, predict, export): read what the checkpoint says about
itself, settle the options against it, and run the tool here or on P processes through torchrun.

The rule (same for every such command): the checkpoint's recorded preprocessing is used unless an option
typed on the command line says otherwise; then the typed value wins, with one warning naming both.
torch is imported only inside these functions, when a checkpoint is really read.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

from distrib.config import ConfigError, RunConfig, write_run_config
from distrib import data as formats
from distrib.paths import RunPaths
from distrib.preprocess import Preprocessing
from launch import topology
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
    val_split: float | None = None  # --val-split and --seed of training: eval scores the same held-out images
    seed: int | None = None


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
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return ModelRecord(path, ckpt["arch"], list(ckpt["classes"]), pre, config.get("val_split"), config.get("seed"))


def settle_preprocessing(record: ModelRecord, cli: dict, warn) -> Preprocessing:
    """The checkpoint's preprocessing, with what the user typed winning (and named in a warning)."""
    pre = record.preprocessing
    typed = {PREPROCESSING_OPTIONS[k]: v for k, v in cli.items() if k in PREPROCESSING_OPTIONS and v is not None}
    for flag, field in PREPROCESSING_OPTIONS.items():
        if flag in cli and cli[flag] is not None and cli[flag] != getattr(pre, field):
            warn(f"--{flag.replace('_', '-')} {cli[flag]} differs from the checkpoint's {field.replace('_', ' ')} "
                 f"{getattr(pre, field)}; using {cli[flag]} (accuracy will differ from training's)")
    if "crop_size" in typed and "resize_size" not in typed:  # a new crop keeps the checkpoint's ratio
        typed["resize_size"] = max(typed["crop_size"], round(typed["crop_size"] * pre.resize_size / pre.crop_size))
    from dataclasses import replace

    return replace(pre, **typed)


def check_classes(record: ModelRecord, data: str) -> None:
    """The data's class folders must be the checkpoint's, in the same order, before anything starts."""
    classes = formats.check(RunConfig(data=data, val_split=record.val_split))
    if classes != record.classes:
        extra = sorted(set(classes) - set(record.classes))
        missing = sorted(set(record.classes) - set(classes))
        detail = (f"only in the data: {', '.join(extra[:5]) or '-'}; only in the checkpoint: "
                  f"{', '.join(missing[:5]) or '-'}")
        raise ConfigError(f"{data} has {len(classes)} classes but {record.path} was trained on "
                          f"{len(record.classes)} ({detail}); give the dataset it was trained on")


def max_workers(procs: int) -> int:
    """Loader workers per process that the cores can feed: PyTorch warns past one per core."""
    return max(0, min(4, (os.cpu_count() or 1) // max(procs, 1)))


def check_gpus(gpus: int | None) -> int:
    """GPUs to use: the count asked for must be visible here; None means all visible (maybe 0)."""
    visible = topology.visible_gpus()
    if gpus is not None and gpus > visible:
        raise ConfigError(f"--gpus {gpus} asked for, but {visible} visible here; use --gpus {visible}"
                          + (" (or --gpus 0 for CPU processes)" if visible else " to run on the CPU"))
    return visible if gpus is None else gpus


def run_tool(tool: str, cfg: RunConfig, args: list[str], procs: int, out) -> int:
    """Run `python -m distrib TOOL ARGS CONFIG` here (one process) or through torchrun (several); the
    config lives in a temporary run dir that is removed afterwards, whatever happens."""
    run_dir = tempfile.mkdtemp(prefix=f"distrain-{tool}-")
    try:
        paths = RunPaths(run_dir)
        from dataclasses import replace

        cfg = replace(cfg, run_dir=run_dir)
        write_run_config(cfg, paths.config)
        if procs == 1:  # here, in this process: torch is already imported to read the checkpoint
            from distrib.__main__ import run as rank_main

            return rank_main([tool, *args, paths.config])
        argv = topology.standalone_argv(sys.executable, procs, paths.torchrun_logs, [tool, *args, paths.config])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if cfg.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // procs)))
        code, _ = run(argv, env, paths.stop, say=lambda m: None, stderr_path=os.path.join(paths.logs, "torchrun.err"))
        if code == 0:
            return 0
        failure = rank_failure(run_dir)
        if failure and failure.bad_input:
            raise ConfigError(failure.message)  # the rank's own line, exit 2
        out.print(f"[red]{tool} failed[/]: {failure or f'torchrun exit {code}'}", soft_wrap=True)
        return 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
