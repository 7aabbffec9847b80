"""The `distrain` command. Thin shells over pure builders: only this layer runs subprocesses and prints.

Never imports torch at import time: `distrain --help` and `distrain launch --dry-run` stay instant.
"""

from __future__ import annotations

import functools
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from distrib.config import RUNTIME, SLURM, TOPOLOGY, TRAINING, ConfigError, RunConfig, resolve
from distrib.runtime import quick_exit
from launch import archs
from launch.console import err, error, out, warn
from launch.options import command_line, run_options


class Commands(TyperGroup):
    """Bad input, from any command or its options, is handled here once: a ConfigError is one red line on
    stderr saying what is wrong and how to fix it, and exit 2 (main() and a test's CliRunner both pass here)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as e:
            error(str(e))
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=Commands,
    name="distrain",
    help="Train torchvision image classifiers on one GPU, many nodes, or a SLURM cluster.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
CONFIG_OPTION = typer.Option(None, "--config", metavar="FILE", help="TOML file of options (keys are the long option names); "
                             "the command line wins over the file.", rich_help_panel=RUNTIME)


def _version(value: bool) -> None:
    if value:
        from launch.run_local import versions

        v = versions()
        out.print(f"distrain {v['distrain']} (torch {v['torch']}, torchvision {v['torchvision']}, "
                  f"python {v['python']})", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", metavar=" ", help="Print distrain's version and exit.",
                                       callback=_version, is_eager=True)):
    """Train torchvision image classifiers on one GPU, many nodes, or a SLURM cluster."""


def build_config(cli: dict, config_file: Optional[Path]) -> RunConfig:
    cfg = resolve(cli, str(config_file) if config_file else None).with_run_dir()
    archs.check_arch(cfg.arch, cfg.image_size)
    return cfg


@app.command(epilog="[bold]Examples[/]\n\n"
             "  distrain launch --gpus 0 --procs 2 --synthetic --arch resnet18 --image-size 32 --epochs 1\n\n"
             "  distrain launch --gpus 8 --data /data/imagenet --amp bf16 --channels-last\n\n"
             "  distrain launch --nodes 2 --gpus 8 --rdzv-endpoint node01:29400 --data /data/imagenet --dry-run\n\n"
             "  distrain launch --slurm --nodes 2 --gpus 8 --partition gpu --time 24:00:00 --data /data/imagenet")
@run_options(TOPOLOGY, SLURM, TRAINING, RUNTIME, skip=("device",))
def launch(cli: dict, config: Optional[Path] = CONFIG_OPTION,
           dry_run: bool = typer.Option(False, "--dry-run", metavar=" ", help="Print what would run; start nothing.",
                                        rich_help_panel=TOPOLOGY)):
    """Start a run: torchrun on this node, a c10d rendezvous across nodes, DataParallel, or sbatch."""
    from launch import start

    cfg = build_config(cli, config)
    code = start.launch(cfg, command_line("launch", cli, config), dry_run=dry_run, out=out, warn=warn)
    raise typer.Exit(code)


@functools.cache
def _launch_command():
    return typer.main.get_command(app).get_command(None, "launch")  # built once, for every point of a sweep


def parse_launch(argv: list[str]) -> tuple[RunConfig, list[str]]:
    """`distrain launch ARGV` as the launch command itself reads it: (the config, the typed command line)."""
    from launch.options import typed_options

    command = _launch_command()
    try:
        ctx = command.make_context("launch", list(argv))
    except Exception as e:  # click's usage errors (typer vendors its own click): one line, exit 2
        if not hasattr(e, "format_message"):
            raise
        raise ConfigError(f"{e.format_message()}; in the point `distrain launch {shlex.join(argv)}`") from None
    cli = typed_options(ctx, ctx.params)
    config = ctx.params.get("config")
    return build_config(cli, config), command_line("launch", cli, config)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             epilog="[bold]Examples[/]\n\n"
             "  distrain sweep --gpus 0 --data data/digits --arch resnet18 --lr 0.05,0.1 --seed 0,1 --epochs 4\n\n"
             "  distrain sweep --slurm --gpus 4 --data /data/d --lr loguniform:1e-3:1e-1 --sample 8 "
             "--max-parallel 2")
def sweep(ctx: typer.Context,
          sweep_dir: Optional[Path] = typer.Option(None, "--sweep-dir", metavar="DIR", help="The sweep's folder "
                                                   "(default sweeps/<arch>-<hash of the options>: the same "
                                                   "command finds the same sweep)."),
          sample: Optional[int] = typer.Option(None, "--sample", metavar="N", min=1, help="N random points "
                                               "instead of the grid (ranges: loguniform:LO:HI, uniform:LO:HI, "
                                               "int:LO:HI)."),
          max_points: int = typer.Option(64, "--max-points", metavar="N", help="Refuse a sweep of more points."),
          parallel: int = typer.Option(1, "--parallel", metavar="N", min=1, help="Without --slurm: points "
                                       "at once on this node (its GPUs split between them)."),
          max_parallel: Optional[int] = typer.Option(None, "--max-parallel", metavar="P", min=1, help="With "
                                                     "--slurm: array tasks running at once (%P)."),
          dry_run: bool = typer.Option(False, "--dry-run", metavar=" ", help="Print the points and what would "
                                       "run (the array script with --slurm); start nothing.")):
    """A grid of runs (any training option as a comma list, e.g. --lr 0.05,0.1 --seed 0,1), one run dir each in
    one sweep dir; with --slurm one job array. The same command again starts only what is not complete."""
    from launch import sweep as sw

    fixed, axes, ranges = sw.split_args(ctx.args)
    chosen = sw.points_of(axes, ranges, sample, 0, max_points)
    folder = str(sweep_dir) if sweep_dir else sw.default_dir(fixed, axes, ranges, sample)
    points = sw.plan_points(fixed, chosen, folder)
    parsed = [parse_launch(sw.point_argv(fixed, p)) for p in points]
    code = sw.start(points, [c for c, _ in parsed], [t for _, t in parsed], folder, fixed, parallel, max_parallel,
                    dry_run, out)
    raise typer.Exit(code)


@app.command()
@run_options(TRAINING, RUNTIME)
def train(cli: dict, config: Optional[Path] = CONFIG_OPTION):
    """Run one process of a run here (what every rank runs); single-process training on its own."""
    from launch import start

    cfg = build_config(cli, config)
    code = start.train_in_place(cfg, command_line("train", cli, config), out=out, warn=warn)
    raise typer.Exit(code)


# eval, predict and export take a few training options with another meaning: the checkpoint decides
CHECKPOINT = "Instead of the checkpoint's own"
USE_OVERRIDES = {
    "data": {"group": TRAINING, "help": "What to score: the data the checkpoint trained on (the default; its "
             "held-out --val-split images, or val/), another root's val/, or every image of class folders."},
    "image_size": {"group": CHECKPOINT, "hide_default": True, "help": "Crop size (default: the checkpoint's, "
                   "recorded at training)."},
    "val_crop_size": {"group": CHECKPOINT, "hide_default": True, "help": "Centre-crop size (default: the "
                      "checkpoint's)."},
    "val_resize_size": {"group": CHECKPOINT, "hide_default": True, "help": "Shorter side before the crop "
                        "(default: the checkpoint's)."},
    "batch_size": {"group": TOPOLOGY, "hide_default": True, "help": "Images per process per step (default: the "
                   "training run's; 64 for predict)."},
    "workers": {"group": TOPOLOGY, "hide_default": True, "help": "Loader processes per process (default: what "
                "this machine's cores allow, at most 4)."},
}


@app.command(name="eval")
@run_options(TRAINING, skip=tuple(f for f in RunConfig.__dataclass_fields__
                                  if f not in ("data", "image_size", "batch_size", "workers")),
             overrides=USE_OVERRIDES)
def evaluate(cli: dict,
             checkpoint: Path = typer.Option(..., "--checkpoint", metavar="PATH", help="Checkpoint to evaluate (last.pt, best.pt)."),
             gpus: Optional[int] = typer.Option(None, "--gpus", metavar="N", help="GPUs (default: all visible; 0 = CPU).",
                                                rich_help_panel=TOPOLOGY),
             procs: int = typer.Option(1, "--procs", metavar="N", help="CPU processes (with --gpus 0).", rich_help_panel=TOPOLOGY),
             json_out: bool = typer.Option(False, "--json", metavar=" ", help="Print one JSON object: acc1, acc5, loss, samples."),
             ema: bool = typer.Option(True, "--ema/--no-ema", metavar=" ", help="Use the checkpoint's EMA weights when it has "
                                      "them (--model-ema runs); --no-ema: the raw trained weights."),
             report: Optional[Path] = typer.Option(None, "--report", metavar="DIR", help="Also write a per-class "
                                                   "report there: per_class.csv, confused_pairs.csv, "
                                                   "confusion_counts.csv, confusion_matrix.png, "
                                                   "confidently_wrong.png.")):
    """Accuracy of a checkpoint (top-1, top-5, loss), on one or many processes (identical for any count); it
    says which images it scored and how many it skipped as unreadable."""
    from launch import start

    code = start.evaluate(checkpoint, cli, gpus, procs, json_out, out=out, warn=warn, ema=ema, report=report)
    raise typer.Exit(code)


# --- predict and export (issue 11)
USE_OPTIONS = ("image_size", "val_crop_size", "val_resize_size")  # the checkpoint's preprocessing, overridden


@app.command(epilog="[bold]Examples[/]\n\n"
             "  distrain predict --checkpoint runs/r18/checkpoints/best.pt photos/ --topk 3 --output preds.csv\n\n"
             "  distrain predict --checkpoint best.pt @list.txt --gpus 0 --procs 4 --output preds.jsonl\n\n"
             "  distrain predict --model export-onnx/ photos/   (onnxruntime, no torch)")
@run_options(TRAINING, skip=tuple(f for f in RunConfig.__dataclass_fields__
                                  if f not in (*USE_OPTIONS, "batch_size", "workers")), overrides=USE_OVERRIDES)
def predict(cli: dict,
            inputs: list[str] = typer.Argument(..., help="Image files, folders (searched recursively, sorted) "
                                               "or @LIST.txt (one path a line)."),
            checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", metavar="PATH", help="A distrain checkpoint."),
            model: Optional[Path] = typer.Option(None, "--model", metavar="DIR", help="An ONNX export folder (distrain export "
                                                 "--format onnx): runs on onnxruntime, without torch."),
            topk: int = typer.Option(5, "--topk", metavar="K", help="Classes per image."),
            output: Optional[Path] = typer.Option(None, "--output", metavar="FILE", help="x.csv, x.json or x.jsonl (the suffix "
                                                  "picks the format); default: CSV on stdout."),
            gpus: Optional[int] = typer.Option(None, "--gpus", metavar="N", help="GPUs (default: all visible; 0 = CPU).",
                                               rich_help_panel=TOPOLOGY),
            procs: int = typer.Option(1, "--procs", metavar="N", help="CPU processes (with --gpus 0).", rich_help_panel=TOPOLOGY)):
    """Top-k classes and probabilities per image, in input order; an unreadable image is a row with an error."""
    from launch import model_tools

    code = model_tools.predict(inputs, checkpoint, model, topk, output, cli, gpus, procs, out=out, warn=warn)
    raise typer.Exit(code)


@app.command(name="export", epilog="[bold]Examples[/]\n\n"
             "  distrain export --checkpoint runs/r18/checkpoints/best.pt --format onnx --output r18-onnx\n\n"
             "  distrain export --checkpoint best.pt --format safetensors --output r18-st --sample data/val")
@run_options(TRAINING, skip=tuple(f for f in RunConfig.__dataclass_fields__ if f not in USE_OPTIONS),
             overrides=USE_OVERRIDES)
def export_model(cli: dict,
                 checkpoint: Path = typer.Option(..., "--checkpoint", metavar="PATH", help="A distrain checkpoint."),
                 fmt: str = typer.Option(..., "--format", metavar="FORMAT", help="One of: safetensors, onnx, torch-export."),
                 output: Path = typer.Option(..., "--output", metavar="DIR", help="A new folder: the model file and model.json."),
                 sample: Optional[list[str]] = typer.Option(None, "--sample", metavar="PATH", help="Images to check the export on "
                                                            "(files, folders, @LIST.txt; up to 64 used); default: "
                                                            "random pixels.")):
    """A model file for another runtime, with model.json (classes, preprocessing, source sha256), checked."""
    from launch import model_tools

    if fmt not in model_tools.EXPORT_FORMATS:
        raise ConfigError(f"--format {fmt!r} is not one of {', '.join(model_tools.EXPORT_FORMATS)}")
    code = model_tools.export(checkpoint, fmt, output, sample or [], cli, out=out, warn=warn)
    raise typer.Exit(code)
# --- end predict and export


@app.command()
def tensorboard(runs_dir: Path = typer.Argument(Path("runs"), help="Folder holding the runs."),
                port: int = typer.Option(6006, "--port", metavar="N", help="Port to serve on."),
                host: str = typer.Option("127.0.0.1", "--host", metavar="ADDR", help="Address to bind; 0.0.0.0 exposes it to the "
                                         "network.")):
    """Serve the real TensorBoard over all runs (bound to 127.0.0.1 unless asked otherwise)."""
    from launch import tensorboard as tb

    raise typer.Exit(tb.serve(runs_dir, port, host, out=out, warn=warn))


@app.command()
@run_options(TOPOLOGY, SLURM, TRAINING, RUNTIME, skip=("device",))
def check(cli: dict, config: Optional[Path] = CONFIG_OPTION,
          sample: Optional[int] = typer.Option(None, "--sample", metavar="N", min=1, help="Read N random images' headers "
                                               "instead of all (a quick look at a large dataset).")):
    """Pre-flight checks with nothing trained: data, weights, GPUs, backend, rendezvous, run dir, disk."""
    from launch import preflight

    cfg = build_config(cli, config)
    raise typer.Exit(preflight.report(cfg, out=out, sample=sample))


BENCH_OPTIONS = ("data", "synthetic", "arch", "image_size", "batch_size", "workers", "device", "amp",
                 "channels_last", "compile", "decode")


@app.command(epilog="[bold]Examples[/]\n\n"
             "  distrain bench --synthetic --arch resnet50 --batch-size 256 --device cuda\n\n"
             "  distrain bench --loader-only --data /data/imagenet --workers 16 --seconds 20 --json\n\n"
             "  distrain bench --data /data/imagenet --batch-size 256 --workers 16 --decode device")
@run_options(TRAINING, RUNTIME, skip=tuple(f for f in RunConfig.__dataclass_fields__ if f not in BENCH_OPTIONS))
def bench(cli: dict,
          loader_only: bool = typer.Option(False, "--loader-only", metavar=" ", help="Measure the input pipeline alone."),
          steps: int = typer.Option(20, "--steps", metavar="N", help="Timed model steps (after warm-up)."),
          seconds: float = typer.Option(10.0, "--seconds", metavar="S", help="The input pipeline's timed window, after a "
                                        "warm-up until its rate settles (at most as long again)."),
          json_out: bool = typer.Option(False, "--json", metavar=" ", help="Print one JSON object (with images_per_sec).")):
    """Measured throughput: the model step, the input pipeline, or both and which one limits training.
    Default --workers: 4, capped by the cores."""
    from dataclasses import asdict

    cfg = {k: v for k, v in asdict(RunConfig(**cli)).items() if k in BENCH_OPTIONS}
    if "workers" not in cli:
        cfg["workers"] = None  # bench's default: capped by the cores
    archs.check_arch(cfg["arch"], None if loader_only else cfg["image_size"])
    from distrib.tools import bench as b  # torch-free until it measures: b.run checks its arguments first

    result = b.run(loader_only=loader_only, steps=steps, seconds=seconds, **cfg,
                   say=lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
    if json_out:
        import json

        out.print(json.dumps(result), soft_wrap=True, markup=False, highlight=False)  # paths may hold [brackets]
    else:
        out.print(b.describe(result), soft_wrap=True, markup=False, highlight=False)


# --- data preparation: `distrain pack`, `distrain index` (distrib/data/pack.py, distrib/data/index.py)

@app.command()
def pack(data: Path = typer.Argument(..., help="ImageFolder root (train/ and val/, train/ alone, or class folders)."),
         output: Path = typer.Argument(..., help="Folder for the shards (created; an interrupted pack resumes)."),
         shard_size: str = typer.Option("1GB", "--shard-size", metavar="SIZE", help="Image bytes per shard, e.g. 1GB or 256MB."),
         procs: int = typer.Option(1, "--procs", metavar="N", min=1, help="Processes writing shards.")):
    """Pack an ImageFolder into WebDataset tar shards with an offsets index; `--data OUTPUT` then trains on it."""
    from launch import data_tools

    raise typer.Exit(data_tools.pack(str(data), str(output), shard_size, procs, out=out))


@app.command(name="index")
def index_command(data: Path = typer.Argument(..., help="ImageFolder root (train/ and val/, train/ alone, or class folders)."),
                  val_split: Optional[float] = typer.Option(None, "--val-split", metavar="F", help="As for training: for "
                                                            "data with train/ only."),
                  rebuild: bool = typer.Option(False, "--rebuild", metavar=" ", help="Build it even if it looks current.")):
    """Build the sample index of DATA ahead of a run (e.g. once on a login node, or as an sbatch --setup line)."""
    from launch import data_tools

    raise typer.Exit(data_tools.index(str(data), val_split, rebuild, out=out))
# --- end data preparation


@app.command()
def recipes(name: Optional[str] = typer.Argument(None, metavar="NAME", help="One recipe (default: all).")):
    """Named training recipes (--recipe NAME): every option each sets, and where its value comes from."""
    from distrib.config import recipes as r

    if name is not None and name not in r.RECIPES:
        raise ConfigError(f"no recipe {name!r}; the recipes are {', '.join(r.RECIPES)}")
    names = [name] if name else list(r.RECIPES)
    out.print("\n\n".join(r.describe(n) for n in names), soft_wrap=True, markup=False, highlight=False)
    if not name:
        out.print("\nUse one with `distrain launch --recipe NAME ...`; options given on the command line or in "
                  "--config win over the recipe's.", soft_wrap=True, markup=False, highlight=False)


@app.command()
def status(run_dir: Path = typer.Argument(..., help="Run directory, a folder of runs, or a sweep's folder.")):
    """Job state, last finished epoch, best accuracy and the log's tail of a run; for a folder of runs, one
    row per run: state, epoch of N, best acc1, img/s, last update; for a sweep, one row per point."""
    from launch import runs_table
    from launch import status as run_status
    from launch import sweep as sw

    if sw.is_sweep(str(run_dir)):
        sw.show(str(run_dir), out)
        return
    if run_dir.is_dir() and not runs_table.is_run_dir(run_dir) and runs_table.runs_in(run_dir):
        return runs_table.show(run_dir, out=out)
    run_status.show(run_dir, out=out)


def main() -> None:
    """The `distrain` console script: the Typer app, with usage errors (a bad choice, a non-number) as one
    red line and exit 2, like every other bad input (a ConfigError: Commands.invoke), instead of click's
    framed box."""
    from typer.exceptions import TyperException

    try:
        code = app(prog_name="distrain", standalone_mode=False)
    except TyperException as e:  # typer's vendored click.UsageError and friends
        ctx, message = getattr(e, "ctx", None), e.format_message().rstrip(".")
        if message:  # (bare `distrain` shows the help and has nothing to add)
            hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            error(f"{message}{hint}")
        code = getattr(e, "exit_code", 2)
    except SystemExit as e:
        code = e.code
    code = code if isinstance(code, (int, str)) else 0
    if "torch" in sys.modules:  # a tool ran here (train, eval, export...): leave without the teardown
        quick_exit.leave(code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
