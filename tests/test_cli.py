"""The `distrain` command line: parsing, validation, precedence, dry runs, and an instant import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distrib.config import ConfigError, RunConfig, read_run_config, resolve, write_run_config
from launch.cli import app

GOLDEN = Path(__file__).parent / "golden"
runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def test_importing_the_cli_and_a_dry_run_never_import_torch(tmp_path):
    code = ("import sys\nfrom launch.cli import app\n"
            "try:\n    app(['launch', '--nodes', '2', '--gpus', '8', '--rdzv-endpoint', 'head:29400', '--data',"
            f" '/nowhere', '--run-dir', {str(tmp_path / 'r')!r}, '--dry-run'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "loaded = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "assert not loaded, loaded[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_2x8_golden(tmp_path):
    """Two nodes of 8 GPUs, prepared on a machine with no GPU and no data: warnings, then the plan."""
    result = invoke("launch", "--nodes", "2", "--gpus", "8", "--rdzv-endpoint", "head:29400",
                    "--data", "/data/imagenet", "--run-dir", "/shared/runs/rn50", "--dry-run")
    assert result.exit_code == 0, result.output
    text = result.stdout.replace(sys.executable, "PYTHON")
    golden = GOLDEN / "dryrun_2x8.txt"
    if not golden.exists():
        golden.write_text(text)
        pytest.skip("recorded tests/golden/dryrun_2x8.txt; delete the file to re-record")
    assert text == golden.read_text(), "dry-run text changed; delete tests/golden/dryrun_2x8.txt to re-record"
    assert "warning: data dir /data/imagenet does not exist" in result.stderr
    assert "--gpus 8 asked for, but 0 visible here" in result.stderr


def test_dry_run_states_world_batch_lr_and_both_nodes():
    result = invoke("launch", "--nodes", "2", "--gpus", "8", "--rdzv-endpoint", "head:29400", "--data", "/d",
                    "--batch-size", "64", "--run-dir", "/r", "--dry-run")
    out = result.stdout
    assert "world size 16" in out and "global batch 1024" in out and "lr 0.4 (= 0.1 x 1024/256)" in out
    assert out.count("--rdzv-backend c10d --rdzv-endpoint head:29400") == 2 and "--nproc-per-node 8" in out
    assert out.count("--rdzv-id distrain-") == 2  # derived from the command, so every node agrees


def test_same_command_on_every_node_agrees_on_run_dir_and_rendezvous_id():
    args = ["launch", "--nodes", "2", "--gpus", "8", "--rdzv-endpoint", "head:29400", "--data", "/d", "--dry-run"]
    assert invoke(*args).stdout == invoke(*args).stdout


def test_single_node_is_standalone_and_elastic_nodes_pass_through():
    out = invoke("launch", "--gpus", "0", "--procs", "3", "--synthetic", "--run-dir", "/r", "--dry-run").stdout
    assert "--standalone" in out and "--nproc-per-node 3" in out
    out = invoke("launch", "--nodes", "1:4", "--gpus", "2", "--rdzv-endpoint", "10.0.0.1:29400", "--max-restarts",
                 "3", "--synthetic", "--run-dir", "/r", "--dry-run").stdout
    assert "--nnodes 1:4" in out and "--max-restarts 3" in out
    assert "last_call_timeout=30 " in out  # torchrun's own default, said; the option changes it
    out = invoke("launch", "--nodes", "1:4", "--gpus", "2", "--rdzv-endpoint", "10.0.0.1:29400", "--rdzv-last-call",
                 "5", "--synthetic", "--run-dir", "/r", "--dry-run").stdout
    assert "last_call_timeout=5 " in out


def test_config_file_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('epochs = 5\nbatch-size = 8\narch = "resnet18"\nsynthetic = true\n')
    cfg = resolve({"epochs": 7}, str(toml))
    assert (cfg.epochs, cfg.batch_size, cfg.arch, cfg.lr) == (7, 8, "resnet18", 0.1)  # cli > file > default
    out = invoke("launch", "--config", toml, "--epochs", "7", "--gpus", "0", "--run-dir", "/r", "--dry-run").stdout
    assert "global batch 8 (8 per process)" in out


def test_written_config_reproduces_the_run(tmp_path):
    cfg = RunConfig(synthetic=True, arch="resnet18", epochs=3, sbatch_arg=["--constraint=a100"], seed=4,
                    run_dir=str(tmp_path)).validate()
    write_run_config(cfg, str(tmp_path / "config.toml"))
    assert read_run_config(str(tmp_path / "config.toml")) == cfg
    again = invoke("launch", "--config", tmp_path / "config.toml", "--gpus", "0", "--dry-run")
    assert again.exit_code == 0 and str(tmp_path) in again.stdout


@pytest.mark.parametrize("body, message", [
    ("epoch = 3\n", "config key 'epoch'"),
    ("epochs = 'three'\n", "config key 'epochs': expected int"),
    ("batch_size = 1.5\n", "config key 'batch_size': expected int"),
    ("epochs = [\n", "not valid TOML"),
])
def test_bad_config_files_name_the_key(tmp_path, body, message):
    toml = tmp_path / "c.toml"
    toml.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        resolve({}, str(toml))
    result = invoke("launch", "--config", toml, "--synthetic", "--dry-run")
    assert result.exit_code == 2 and message in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0"], "--nodes 0 needs 1 <= MIN <= MAX"),
    (["--nodes", "two"], "is not N or MIN:MAX"),
    (["--gpus", "-1"], "--gpus -1 is negative"),
    (["--batch-size", "0"], "--batch-size 0 must be at least 1"),
    (["--arch", "resnet05"], "did you mean resnet50"),
    (["--nodes", "2", "--gpus", "0"], "needs --rdzv-endpoint HOST:PORT"),
    (["--resume", "/no/such.pt"], "--resume /no/such.pt: no such checkpoint file"),
    (["--strategy", "dp", "--nodes", "2", "--rdzv-endpoint", "h:1"], "--strategy dp runs one process on one node"),
    (["--rdzv-endpoint", "h:99999", "--nodes", "2"], "is not HOST:PORT"),
])
def test_bad_options_exit_2_with_one_line(args, message):
    result = invoke("launch", "--synthetic", "--dry-run", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_launch_refuses_missing_data_but_dry_run_only_warns(tmp_path):
    real = invoke("launch", "--gpus", "0", "--data", tmp_path / "none", "--run-dir", tmp_path / "r")
    assert real.exit_code == 2 and "does not exist" in real.stderr
    assert not (tmp_path / "r" / "config.toml").exists()  # nothing started
    dry = invoke("launch", "--gpus", "0", "--data", tmp_path / "none", "--run-dir", tmp_path / "r", "--dry-run")
    assert dry.exit_code == 0 and "warning:" in dry.stderr


def test_static_arch_list_matches_torchvision():
    import torchvision

    from launch.archs import KNOWN

    assert set(KNOWN) <= set(torchvision.models.list_models(module=torchvision.models))


def test_help_lists_the_commands_and_option_groups():
    result = invoke("--help")
    for command in ("launch", "train", "eval", "tensorboard", "check", "bench", "status"):
        assert command in result.stdout
    launch_help = invoke("launch", "--help").stdout
    for panel in ("Topology", "SLURM cluster", "Training", "Examples"):
        assert panel in launch_help


@pytest.mark.parametrize("args, message", [
    (["launch", "--synthetic", "--amp", "fp8"], "Invalid value for '--amp'"),
    (["launch", "--synthetic", "--epochs", "x"], "Invalid value for '--epochs'"),
    (["launch", "--no-such-option"], "No such option"),
])
def test_usage_errors_are_one_line_through_the_real_command(args, message):
    proc = subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("args", [["--version"], ["status", "--help"], ["eval", "--checkpoint", "x.pt"],
                                  ["launch", "--gpus", "0", "--data", "d", "--dry-run"]])
def test_a_command_forked_from_the_tests_warm_server_prints_what_a_new_interpreter_prints(args, tmp_path):
    """conftest's distrain() forks most commands from tests/warm_cli.py (imports paid once); the same
    folder, environment, output and exit code as `python -m launch ARGS` in a shell. --help wraps at the
    request's COLUMNS; d/ (class folders, no train/) is found only from the request's folder."""
    from conftest import distrain

    (tmp_path / "d" / "cat").mkdir(parents=True)
    warm = distrain(*args, cwd=tmp_path, env={"COLUMNS": "67"})
    fresh = distrain(*args, cwd=tmp_path, env={"COLUMNS": "67"}, fresh=True)
    assert (warm.returncode, warm.stdout, warm.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
