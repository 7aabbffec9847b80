"""`distrain sweep`: the grid, its bad input, a local sweep with --parallel (and its HPARAMS in real
TensorBoard), one job array on the real two-node SLURM cluster (preempt one task, fail another, resubmit only
that one), and a sweep past the cluster's MaxArraySize split into several arrays."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY, assert_ok, distrain, metrics, one_line_error
from slurm_cluster import cluster_available, release_if_pending, wait_job
from test_tensorboard import post_json, served

from slurm.submit import job_state, max_array_size

FAST = [*TINY, "--epochs", "1", "--steps-per-epoch", "2"]
EVERY_STATUS = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def needs_cluster() -> None:
    if not cluster_available():
        if os.environ.get("DISTRAIN_REQUIRE_SLURM") == "1":
            raise RuntimeError("SLURM cluster is not up: run `bash tests/slurm/cluster.sh up`")
        pytest.skip("no local SLURM cluster (bash tests/slurm/cluster.sh up)")


def hparams_of(folder: Path) -> tuple[dict, dict]:
    """What the real `distrain tensorboard FOLDER` serves to its HPARAMS tab: (the experiment, the session
    groups by name), once TensorBoard has loaded every run of the folder (it reads them in the background)."""
    runs = sum(1 for p in folder.iterdir() if (p / "tb").is_dir())
    groups, deadline = {}, time.monotonic() + 90
    with served(folder) as server:
        base = f"{server.base}/data/plugin/hparams"
        while time.monotonic() < deadline:
            try:
                experiment = post_json(f"{base}/experiment", {"experimentName": ""})
                found = post_json(f"{base}/session_groups", {
                    "experimentName": "", "allowedStatuses": EVERY_STATUS, "colParams": [], "startIndex": 0,
                    "sliceSize": 100})["sessionGroups"]
                groups = {g["name"]: g for g in found}
                if len(groups) >= runs:
                    return experiment, groups
            except OSError:
                pass
            time.sleep(0.5)
    raise AssertionError(f"TensorBoard showed {sorted(groups)} of {runs} runs in 90 s:\n{server.out[-2000:]}")


def test_a_grid_dry_run_names_every_point_and_writes_nothing(imagefolder, tmp_path):
    proc = distrain("sweep", "--gpus", "0", "--data", imagefolder, *FAST, "--lr", "0.05,0.1", "--seed", "0,1",
                    "--sweep-dir", tmp_path / "s", "--dry-run")
    assert_ok(proc)
    assert "4 points over --lr, --seed" in proc.stderr
    runs = re.findall(r"--run-dir (\S+)", proc.stdout)
    assert [Path(r).name for r in runs] == ["lr0.05-seed0", "lr0.05-seed1", "lr0.1-seed0", "lr0.1-seed1"]
    assert not (tmp_path / "s").exists()


def test_a_sample_draws_points_inside_the_ranges_and_the_same_command_draws_the_same(imagefolder, tmp_path):
    args = ["sweep", "--gpus", "0", "--data", imagefolder, *FAST, "--lr", "loguniform:1e-3:1e-1",
            "--weight-decay", "uniform:1e-5:1e-4", "--seed", "int:0:9", "--sample", "5", "--sweep-dir",
            tmp_path / "s", "--dry-run"]
    first, second = distrain(*args), distrain(*args)
    assert_ok(first)
    assert re.search(r"5 points over (--lr|--weight-decay|--seed), (--lr|--weight-decay|--seed), ", first.stderr)
    points = [dict(re.findall(r"--(lr|weight-decay|seed) (\S+)", line)) for line in first.stdout.splitlines()
              if line.startswith("point ")]
    assert len(points) == 5 and first.stdout == second.stdout  # drawn from the command: a rerun resumes them
    assert all(1e-3 <= float(p["lr"]) <= 1e-1 and 1e-5 <= float(p["weight-decay"]) <= 1e-4 and
               p["seed"] in {str(i) for i in range(10)} for p in points), points
    assert len({p["lr"] for p in points}) == 5  # drawn, not one value repeated


def test_an_array_script_has_one_task_per_point(imagefolder, tmp_path):
    proc = distrain("sweep", "--slurm", "--gpus", "0", "--data", imagefolder, *FAST, "--lr", "0.05,0.1",
                    "--seed", "0,1", "--max-parallel", "2", "--sweep-dir", tmp_path / "s", "--dry-run",
                    env={"PATH": os.environ["PATH"]})
    assert_ok(proc)
    script = proc.stdout
    assert "#SBATCH --array=0-3%2\n" in script and "/logs/slurm-%A_%a.out" in script
    assert 'RUN_DIR="${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}"' in script and '"$RUN_DIR")' in script
    assert script.count(str(tmp_path / "s" / "lr0.1-seed1")) == 1


@pytest.mark.parametrize("args,expected", [
    (["--gpus", "0", "--procs", "1,2", "--lr", "0.1,0.2"], "--procs cannot vary inside one sweep"),
    (["--gpus", "0", "--lr", "loguniform:1e-3:1e-1"], "a range needs --sample N"),
    (["--gpus", "0", "--lr", "loguniform:1e-1:1e-3", "--sample", "2"], "an empty range"),
    (["--gpus", "0", "--lr", "0.1,0.2", "--seed", "0,1,2", "--max-points", "4"], "more than --max-points 4"),
    (["--gpus", "0", "--lr", "0.1"], "needs at least one option with several values"),
    (["--gpus", "0", "--lr", "0.1,x"], "Invalid value for '--lr'"),
    (["--gpus", "0", "--lr", "0.1,0.2", "--not-an-option", "3"], "No such option"),
])
def test_bad_sweeps_are_one_line(imagefolder, args, expected):
    assert expected in one_line_error(distrain("sweep", "--data", imagefolder, *args, "--dry-run"))


def test_a_sampled_sweep_draws_its_points_in_the_ranges_the_same_for_the_same_command(imagefolder, tmp_path):
    args = ["sweep", "--gpus", "0", "--data", imagefolder, "--lr", "loguniform:0.01:0.1", "--batch-size", "int:8:32",
            "--momentum", "uniform:0.8:0.95", "--sample", "4", "--seed", "7", "--sweep-dir", tmp_path / "s", "--dry-run"]
    proc = distrain(*args)
    assert_ok(proc)
    points = re.findall(r"^point \d+: distrain launch .*--lr (\S+) --batch-size (\S+) --momentum (\S+) ", proc.stdout,
                        re.MULTILINE)
    assert len(points) == 4, proc.stdout
    for lr, batch, momentum in points:
        assert 0.01 <= float(lr) <= 0.1 and batch.isdigit() and 8 <= int(batch) <= 32 and 0.8 <= float(momentum) <= 0.95
    assert len({p[0] for p in points}) == 4  # drawn, not a grid
    assert distrain(*args).stdout == proc.stdout  # the same command draws the same points
    assert distrain(*args[:-6], "--seed", "8", *args[-4:]).stdout != proc.stdout


def test_a_local_sweep_runs_two_at_once_and_the_same_command_starts_nothing_more(imagefolder, tmp_path):
    args = ["sweep", "--gpus", "0", "--data", imagefolder, *FAST, "--lr", "0.05,0.2", "--seed", "0,1",
            "--parallel", "2", "--sweep-dir", tmp_path / "s"]
    proc = distrain(*args, timeout=600)
    assert_ok(proc)
    runs = sorted(p.name for p in (tmp_path / "s").iterdir() if (p / "config.toml").exists())
    assert runs == ["lr0.05-seed0", "lr0.05-seed1", "lr0.2-seed0", "lr0.2-seed1"]
    assert all(len(metrics(tmp_path / "s" / r)) == 1 for r in runs)
    again = distrain(*args)
    assert_ok(again)
    assert "every point is complete" in again.stdout and "complete: 4" in again.stderr
    table = distrain("status", tmp_path / "s", env={"COLUMNS": "200"})
    assert_ok(table)
    rows = [line for line in table.stdout.splitlines() if "lr0." in line]
    assert len(rows) == 4 and all("finished" in r for r in rows)
    best = max((metrics(tmp_path / "s" / r)[0]["val_acc1"], r) for r in runs)
    assert best[1] in rows[0] and f"{best[0]:.2f}" in rows[0]  # best first
    # a point is an ordinary run: eval scores its best.pt as its training recorded, predict and export take it
    point = tmp_path / "s" / best[1]
    scored = distrain("eval", "--checkpoint", point / "checkpoints" / "best.pt", "--json")
    assert_ok(scored)
    assert json.loads(scored.stdout.strip().splitlines()[-1])["acc1"] == metrics(point)[-1]["val_acc1"]
    preds = tmp_path / "preds.csv"
    assert_ok(distrain("predict", "--checkpoint", point / "checkpoints" / "best.pt", Path(imagefolder) / "val",
                       "--output", preds))
    assert len(preds.read_text().splitlines()) == 1 + 29  # a header and a row per val image
    exported = distrain("export", "--checkpoint", point / "checkpoints" / "best.pt", "--format", "safetensors",
                        "--output", tmp_path / "export")
    assert_ok(exported)
    assert (tmp_path / "export" / "model.safetensors").is_file()
    # TensorBoard over the sweep dir: one experiment whose columns include both varied options, and a
    # session per point holding that point's values and its own final acc1
    experiment, sessions = hparams_of(tmp_path / "s")
    assert {"lr", "seed"} <= {h["name"] for h in experiment["hparamInfos"]}
    assert sorted(sessions) == runs and all(len(g["sessions"]) == 1 for g in sessions.values())
    for name, group in sessions.items():
        lr, seed = re.fullmatch(r"lr([\d.]+)-seed(\d)", name).groups()
        assert (group["hparams"]["lr"], group["hparams"]["seed"]) == (float(lr), int(seed)), group["hparams"]
        acc1 = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}["val/acc1"]
        assert acc1 == pytest.approx(metrics(tmp_path / "s" / name)[-1]["val_acc1"], abs=1e-4)
    assert len(list((tmp_path / "s").glob("events.out.tfevents.*distrain-experiment*"))) == 1  # at the root
    assert not list((tmp_path / "s").glob("*/events.out.tfevents.*distrain-experiment*"))  # none in a run


def signal_batch_shell(task: str, signal: str) -> None:
    """One `scancel --signal=SIG --batch` of an array task. SLURM 22.05 delivers the signal but answers "Job can
    not be altered now" while two or more of the task's siblings are pending, and scancel then retries for
    ~95 s, delivering the signal again at each try (a second preemption, after the requeue): one try is meant."""
    proc = subprocess.Popen(["scancel", f"--signal={signal}", "--batch", task])
    try:
        proc.wait(timeout=3)  # scancel waits 5 s before its first retry
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def running_steps(task: str) -> list[str]:
    """The task's srun steps (its torchrun agents and ranks), not its batch shell."""
    out = subprocess.run(["squeue", "-h", "-s", "-j", task, "-o", "%i"], capture_output=True, text=True,
                         check=False).stdout
    return [step for step in out.split() if re.fullmatch(r"[\d_]+\.\d+", step)]


@pytest.mark.slurm
def test_a_slurm_sweep_is_one_array_preempted_tasks_resume_and_a_failed_point_resubmits_alone(imagefolder, tmp_path):
    needs_cluster()
    sweep = tmp_path / "s"
    args = ["sweep", "--slurm", "--gpus", "0", "--data", imagefolder, *TINY, "--epochs", "4", "--lr", "0.05,0.2",
            "--seed", "0,1", "--max-parallel", "2", "--sweep-dir", sweep]
    proc = distrain(*args)
    assert_ok(proc)
    array = re.search(r"submitted array job (\d+)", proc.stdout).group(1)
    tasks = [f"{array}_{i}" for i in range(4)]
    most_running, preempted, killed = 0, False, []
    deadline = time.monotonic() + 600

    def running() -> list[str]:
        out = subprocess.run(["squeue", "-h", "-r", "-j", array, "-t", "R", "-o", "%i"], capture_output=True,
                             text=True, check=False).stdout
        return out.split()

    while time.monotonic() < deadline:
        now = running()
        most_running = max(most_running, len(now))
        if not preempted and metrics(sweep / "lr0.05-seed0") and job_state(tasks[0]) == "RUNNING":
            # task 0 trained an epoch of its 4: preempt it (as SLURM does before a time limit)
            signal_batch_shell(tasks[0], "USR1")
            preempted = True
        if not killed and (sweep / "lr0.2-seed1" / "position.json").exists() and job_state(tasks[3]) == "RUNNING":
            # task 3 wrote its first checkpoint: its ranks die (SIGKILL, as the OOM killer does), so the task
            # ends FAILED with last.pt behind it
            killed = running_steps(tasks[3])
            for step in killed:
                subprocess.run(["scancel", "--signal=KILL", step], check=False)
        for task in tasks:
            release_if_pending(task, settle=1.0)
        states = [job_state(t) for t in tasks]
        if all(s in ("COMPLETED", "FAILED", "CANCELLED") for s in states):
            break
        time.sleep(0.5)
    assert killed, "task 3 never ran with a checkpoint written"
    assert states == ["COMPLETED"] * 3 + ["FAILED"], (states, list((sweep / "logs").iterdir()))
    assert most_running <= 2
    assert preempted and [r["epoch"] for r in metrics(sweep / "lr0.05-seed0")] == [0, 1, 2, 3]  # none twice
    log = (sweep / "logs" / f"slurm-{array}_0.out").read_text()
    assert log.count("requeueing") == 1, log  # one USR1, one requeue
    status = distrain("status", sweep, env={"COLUMNS": "200"})
    names = ["lr0.05-seed0", "lr0.05-seed1", "lr0.2-seed0", "lr0.2-seed1"]
    rows = {n: [line for line in status.stdout.splitlines() if n in line] for n in names}
    assert all(len(r) == 1 for r in rows.values()), status.stdout
    rows = {n: r[0] for n, r in rows.items()}
    assert sum("finished" in r for r in rows.values()) == 3, status.stdout
    assert "failed" in rows["lr0.2-seed1"] and "finished" not in rows["lr0.2-seed1"], status.stdout
    # the same command would submit the failed point alone (its dry run: the array script, task 3 only) ...
    plan = distrain(*args, "--dry-run")
    assert_ok(plan)
    assert "complete: 3 (" in plan.stderr and "to run: 1 (lr0.2-seed1)" in plan.stderr, plan.stderr
    assert "#SBATCH --array=3%2\n" in plan.stdout
    # ... and the point's own job.sbatch resubmits it alone, from any folder: it resumes from its last.pt
    point = sweep / "lr0.2-seed1"
    job = subprocess.run(["sbatch", "--parsable", str(point / "job.sbatch")], cwd="/", capture_output=True,
                         text=True, check=True).stdout.strip().split(";")[0]
    state = wait_job(job, timeout=300)
    log = (point / "logs" / f"slurm-{job}.out").read_text()
    assert state == "COMPLETED", log
    assert [r["epoch"] for r in metrics(point)] == [0, 1, 2, 3]
    assert "resumed from" in log, log
    # every point complete: the same command starts nothing more
    again = distrain(*args)
    assert_ok(again)
    assert "complete: 4 (" in again.stderr and "nothing to start" in again.stdout, again.all
    # the array's points side by side in TensorBoard's HPARAMS: a session per point, lr and seed as columns
    experiment, sessions = hparams_of(sweep)
    assert {"lr", "seed"} <= {h["name"] for h in experiment["hparamInfos"]}
    assert sorted(sessions) == names
    assert all((g["hparams"]["lr"], g["hparams"]["seed"]) == (float(re.search(r"lr([\d.]+)", n).group(1)),
                                                              int(n[-1])) for n, g in sessions.items())


@pytest.mark.slurm
def test_a_sweep_past_max_array_size_becomes_several_arrays(imagefolder, tmp_path):
    needs_cluster()
    limit = max_array_size()
    assert limit == 4, f"MaxArraySize is {limit}; tests/slurm/cluster.sh sets 4: run `bash tests/slurm/cluster.sh up`"
    sweep = tmp_path / "s"
    # held (never started): what is checked is how the 6 points were submitted, not their training
    proc = distrain("sweep", "--slurm", "--gpus", "0", "--data", imagefolder, *FAST, "--lr", "0.05,0.1,0.2",
                    "--seed", "0,1", "--sweep-dir", sweep, "--sbatch-arg=--hold")
    jobs = re.findall(r"submitted array job (\d+): points (\S+) \((\d) task", proc.stdout)
    try:
        assert_ok(proc)
        assert [(points, n) for _, points, n in jobs] == [("0-3", "4"), ("4-5", "2")], proc.stdout
        for (job, _, n), script in zip(jobs, ("job-0.sbatch", "job-1.sbatch")):
            tasks = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i"], capture_output=True, text=True,
                                   check=False).stdout.split()
            assert sorted(tasks) == [f"{job}_{i}" for i in range(int(n))]  # every index below MaxArraySize
            assert f"#SBATCH --array=0-{int(n) - 1}\n" in (sweep / script).read_text()
        # each point knows its task: the second array's task 1 is point 5
        names = ["lr0.05-seed0", "lr0.05-seed1", "lr0.1-seed0", "lr0.1-seed1", "lr0.2-seed0", "lr0.2-seed1"]
        owners = [json.loads((sweep / n / "launch.json").read_text())["job_id"] for n in names]
        first, second = jobs[0][0], jobs[1][0]
        assert owners == [f"{first}_{i}" for i in range(4)] + [f"{second}_{i}" for i in range(2)]
        table = distrain("status", sweep, env={"COLUMNS": "200"})  # SLURM's PENDING, in the user's words
        assert sum(" pending " in line for line in table.stdout.splitlines()) == 6, table.stdout
    finally:
        for job, _, _ in jobs:
            subprocess.run(["scancel", job], check=False)
