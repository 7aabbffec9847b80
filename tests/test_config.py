"""The run config (distrib/config/): frozen sections whose bounds and choices sit beside the fields, one
generic validate(), and every way in (the command line, a --config file, a rank's config.toml) through it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from conftest import distrain

from distrib.config import SECTIONS, ConfigError, RunConfig, read_run_config, resolve, write_run_config


def one_error_line(proc) -> str:
    assert proc.returncode == 2, proc.all
    assert "Traceback" not in proc.all, proc.all
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# one bound or choice per section, given the way users give it; the message says what, expected, and a fix
@pytest.mark.parametrize("section, args, message", [
    ("topology", ["--procs", "0"], "--procs 0 must be at least 1; e.g. --procs 1"),
    ("slurm", ["--signal-seconds", "70000"], "--signal-seconds 70000 must be between 1 and 65535"),
    ("data", ["--val-split", "1.5"], "--val-split 1.5 must be between 0 and 1, in (0, 1); e.g. --val-split 0.1"),
    ("model", ["--bucket-mb", "0"], "--bucket-mb 0 must be at least 1; e.g. --bucket-mb 25"),
    ("optimisation", ["--label-smoothing", "1"], "--label-smoothing 1.0 must be between 0 and 1, in [0, 1)"),
    ("recipe", ["--ema-decay", "1"], "--ema-decay 1.0 must be between 0 and 1, in (0, 1)"),
    ("recipe", ["config:recipe = 'nope'"], ("--recipe 'nope' is not one of tv-resnet-v1, tv-resnet50-v2; see "
                                            "`distrain recipes`")),
    ("run", ["config:device = 'tpu'"], "--device 'tpu' is not one of auto, cpu, cuda"),
])
def test_a_bad_value_in_each_section_is_one_line_and_exit_2(tmp_path, section, args, message):
    if args[0].startswith("config:"):  # a value the command line's own choices would refuse first: from a file
        (tmp_path / "c.toml").write_text(args[0].removeprefix("config:") + "\n")
        args = ["--config", tmp_path / "c.toml"]
    proc = distrain("launch", "--synthetic", "--gpus", "0", "--run-dir", tmp_path / "r", "--dry-run", *args)
    assert message in one_error_line(proc), section
    assert not (tmp_path / "r").exists()  # nothing started


def test_the_sections_partition_the_options_and_declare_their_bounds():
    names = [f.name for section in SECTIONS for f in dataclasses.fields(section)]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(RunConfig)) and len(set(names)) == len(names)
    assert [f.name for f in dataclasses.fields(RunConfig)] == names  # the sections' order: --help, config.toml
    assert all(section.__dataclass_params__.frozen for section in SECTIONS)


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(RunConfig)
                                  if f.metadata["min"] is not None or f.metadata["above"] is not None])
def test_every_lower_bound_is_checked_generically(name):
    """validate() is a loop over the fields: each declared bound refuses the value just past it, naming it."""
    meta = RunConfig.__dataclass_fields__[name].metadata
    low = meta["min"] if meta["min"] is not None else meta["above"]
    bad = low - 1 if meta["min"] is not None else low
    hint = RunConfig.__dataclass_fields__[name].type
    bad = float(bad) if "float" in str(hint) else bad
    with pytest.raises(ConfigError, match="^--" + name.replace("_", "-") + " ") as e:
        RunConfig(synthetic=True, **{name: bad}).validate()
    assert "\n" not in str(e.value) and ("e.g." in str(e.value) or ";" in str(e.value))


def test_a_config_is_frozen():
    cfg = RunConfig(synthetic=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, "epochs", 3)
    assert dataclasses.replace(cfg, lr=0.5).lr == 0.5 and cfg.lr == 0.1
    assert RunConfig(synthetic=True, sbatch_arg=["--x=1"]).sbatch_arg == ("--x=1",)  # lists become tuples
    assert hash(cfg) == hash(RunConfig(synthetic=True))


OLD_CONFIG = """\
nodes = "1"
gpus = 0
procs = 2
strategy = "ddp"
max_restarts = 0
dist_timeout = 600
slurm = false
launcher = "torchrun"
exclusive = false
gpu_directive = "gpus-per-node"
sbatch_arg = [
    "--constraint=a100",
]
setup = []
max_requeues = 3
signal_seconds = 300
synthetic = true
arch = "resnet18"
pretrained = false
freeze_backbone = false
head_lr_mult = 1.0
epochs = 2
batch_size = 8
lr = 0.2
momentum = 0.9
weight_decay = 0.0001
decay_norm_bias = true
schedule = "cosine"
step_size = 30
warmup_epochs = 0.0
label_smoothing = 0.1
image_size = 32
workers = 0
decode = "workers"
amp = "auto"
compile = false
bucket_mb = 25
sync_bn = false
seed = 3
log_interval = 20
auto_augment = "none"
random_erase = 0.0
mixup_alpha = 0.0
cutmix_alpha = 0.0
model_ema = false
ema_decay = 0.99998
ema_steps = 32
optimizer = "sgd"
accum_steps = 1
ra_reps = 1
lr_min = 0.0
run_dir = "{run_dir}"
resume = "auto"
overwrite = false
device = "cpu"
"""


def test_an_old_config_toml_still_loads_and_round_trips(tmp_path):
    """A config.toml as the flat RunConfig wrote it (keys in its order, lists for repeatable options)."""
    path = tmp_path / "config.toml"
    path.write_text(OLD_CONFIG.format(run_dir=tmp_path))
    cfg = read_run_config(str(path))
    assert (cfg.procs, cfg.lr, cfg.schedule, cfg.seed, cfg.sbatch_arg, cfg.setup) == \
        (2, 0.2, "cosine", 3, ("--constraint=a100",), ())
    again = tmp_path / "again" / "config.toml"
    write_run_config(cfg, str(again))
    assert read_run_config(str(again)) == cfg
    assert 'sbatch_arg = [\n    "--constraint=a100",\n]' in again.read_text()  # still a TOML list
    assert resolve({}, str(path)) == cfg  # and as --config FILE
    hyphens = tmp_path / "h.toml"
    hyphens.write_text('synthetic = true\nbatch-size = 4\nnodes = 2\nsbatch-arg = ["--x=1"]\n')
    assert (resolve({}, str(hyphens)).batch_size, resolve({}, str(hyphens)).nodes) == (4, "2")


def test_a_rank_refuses_a_bad_config_toml_with_one_line(tmp_path):
    bad = tmp_path / "BAD"
    bad.mkdir()
    (bad / "config.toml").write_text(OLD_CONFIG.format(run_dir=bad).replace("batch_size = 8", "batch_size = 0"))
    proc = subprocess.run([sys.executable, "-m", "distrib", "train", str(bad / "config.toml")],
                          capture_output=True, text=True, timeout=120)
    proc.all = proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert f"{bad / 'config.toml'}: --batch-size 0 must be at least 1" in line
    assert not (bad / "checkpoints").exists()


def test_cross_field_rules_and_slurm_forms_keep_their_messages():
    for kw, message in [
        ({"strategy": "dp", "procs": 2}, "--strategy dp runs one process"),
        ({"lr": 0.1, "lr_min": 0.2}, "--lr-min 0.2 must be below --lr 0.1"),
        ({"nodes": "3:2"}, "--nodes 3:2 needs 1 <= MIN <= MAX"),
        ({"time": "00:04:00"}, "is not longer than --signal-seconds 300"),
        ({"sbatch_arg": ["--time=1:00:00"]}, "--sbatch-arg '--time=1:00:00' sets what distrain writes itself"),
        ({"rdzv_endpoint": "h:0"}, "--rdzv-endpoint 'h:0' is not HOST:PORT"),
        ({"epochs": "3"}, "--epochs '3' is not an integer"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            RunConfig(synthetic=True, **kw).validate()
    with pytest.raises(ConfigError, match="no data: pass --data DIR"):
        RunConfig().validate()


@pytest.mark.parametrize("args, message", [
    (["bench", "--synthetic", "--batch-size", "0"], "--batch-size 0 must be at least 1"),
    (["check", "--synthetic", "--gpus", "0", "--ema-steps", "0"], "--ema-steps 0 must be at least 1"),
])
def test_other_entry_points_go_through_the_same_validate(tmp_path, args, message):
    proc = distrain(*args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.all, proc.all
