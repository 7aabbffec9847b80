"""slurm/sbatch.py and slurm/submit.py: the rendered script, run under bash with stub srun/scontrol/python,
and (when tests/slurm/cluster.sh is up) on the real two-node cluster.

    python3 -m pytest tests/test_sbatch.py -q
"""

from __future__ import annotations

import dataclasses
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from slurm_cluster import FINAL_STATES, cluster_available, job_restarts, wait_job

from distrib.config import ConfigError, RunConfig, time_limit_seconds
from launch import torchrun
from launch.slurm_launch import cpus_per_task
from slurm.sbatch import SbatchJob, activate_line, render_sbatch
from slurm.submit import SlurmError, job_state, submission_env, submit

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "sbatch_2x8.txt"
WEIRD = "run dir 'sq' \"dq\" $(touch PWNED) `touch PWNED` ;touch PWNED; %j #h"


def make(run_dir="/shared/runs/resnet50", gpus=8, procs=8, nodes=2, rank_argv=None, python="/opt/venv/bin/python",
         activate=None, max_restarts=0, env=(), **cfg_kw):
    cfg = RunConfig(nodes=str(nodes), gpus=gpus, synthetic=True, run_dir=run_dir, **cfg_kw)
    plan = SimpleNamespace(procs_per_node=procs, device="cuda" if gpus else "cpu")
    job = SbatchJob(run_dir=run_dir, job_name="distrain-resnet50", nodes=nodes, gpus_per_node=gpus,
                    procs_per_node=procs, python=python, activate=activate,
                    cpus_per_task=cpus_per_task(cfg, plan, None)[0] if cfg.cpus_per_gpu else None,  # as the launcher
                    rank_argv=tuple(rank_argv or ("-m", "distrib", "train", f"{run_dir}/config.toml")),
                    node_argv=tuple(torchrun.node_args(procs, "cuda" if gpus else "cpu", max_restarts, run_dir)),
                    endpoint_argv=tuple(torchrun.endpoint_args()), env=env)
    cfg.validate()
    return cfg, job


def sbatch_words(script: str) -> list[str]:
    """The #SBATCH arguments as sbatch reads them: a port of sbatch/opt.c `_get_argument` (quotes group,
    a backslash escapes the next character, an unquoted # ends the line); parsing stops at the first command."""
    words = []
    for line in script.splitlines()[1:]:
        if not line.startswith("#SBATCH"):
            if line.strip() and not line.strip().startswith("#"):
                break
            continue
        i, text = 0, line[len("#SBATCH"):]
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            word, quote, escaped = [], "", False
            while i < len(text) and (quote or not text[i].isspace()):
                c, i = text[i], i + 1
                if escaped:
                    escaped = False
                    word.append(c)
                elif c == "\\":
                    escaped = True
                elif quote:
                    if c == quote:
                        quote = ""
                    else:
                        word.append(c)
                elif c in "\"'":
                    quote = c
                elif c == "#":
                    i = len(text)
                    break
                else:
                    word.append(c)
            assert not quote, f"unmatched quote in {line!r}"
            if not word:
                break
            words.append("".join(word))
    return words


# ---------------------------------------------------------------- the text itself

def test_golden_2x8():
    text = render_sbatch(*make(partition="gpu", time="24:00:00"))
    if not GOLDEN.exists():
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
        pytest.skip(f"recorded {GOLDEN}; check it in")
    assert text == GOLDEN.read_text(), f"the script changed; if that is intended, delete {GOLDEN} to re-record"


def test_directives_torchrun_layout():
    words = sbatch_words(render_sbatch(*make(partition="gpu", time="24:00:00", mem="64G", account="proj",
                                             qos="high", exclusive=True, cpus_per_gpu=6,
                                             sbatch_arg=["--constraint=a100|h100", "--comment=two words"])))
    assert words == ["--job-name=distrain-resnet50", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                     "--cpus-per-task=48", "--mem=64G", "--time=24:00:00", "--partition=gpu", "--account=proj",
                     "--qos=high", "--exclusive", "--output=/shared/runs/resnet50/logs/slurm-%j.out",
                     "--open-mode=append", "--requeue", "--signal=B:USR1@300", "--constraint=a100|h100",
                     "--comment=two words"]


def test_gres_directive_and_cpu_runs():
    assert "--gres=gpu:4" in sbatch_words(render_sbatch(*make(gpus=4, procs=4, gpu_directive="gres")))
    cpu = render_sbatch(*make(gpus=0, procs=3))
    assert not [w for w in sbatch_words(cpu) if w.startswith(("--gres", "--gpus"))]
    assert "--procs 3 --device cpu" in cpu


def test_srun_launcher_layout():
    text = render_sbatch(*make(launcher="srun", cpus_per_gpu=6))
    words = sbatch_words(text)
    assert "--ntasks-per-node=8" in words and "--cpus-per-task=6" in words  # per task, not per node
    assert "torch.distributed.run" not in text
    assert 'srun --kill-on-bad-exit=1 --wait=60 --label "$PYTHON" -u "${RANK_ARGV[@]}" &' in text
    assert "export MASTER_ADDR MASTER_PORT" in text


def test_requeue_cap_and_signal_seconds():
    text = render_sbatch(*make(max_requeues=7, signal_seconds=120))
    assert "MAX_REQUEUES=7\n" in text and "--signal=B:USR1@120" in sbatch_words(text)


def test_setup_lines_run_after_activation_before_launch():
    text = render_sbatch(*make(activate="source /opt/venv/bin/activate",
                               setup=["module load cuda/12", "ulimit -n 4096"]))
    block = "set +u\nsource /opt/venv/bin/activate\nmodule load cuda/12\nulimit -n 4096\nset -u\n"
    assert block in text and text.index(block) < text.index("srun ")


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
@pytest.mark.parametrize("run_dir", ["/shared/runs/r1", f"/tmp/{WEIRD}"])
def test_bash_n(launcher, run_dir):
    cfg, job = make(run_dir=run_dir, launcher=launcher, setup=["echo 'it''s' \"$HOME\""], cpus_per_gpu=2,
                    rank_argv=("-m", "distrib", "train", "line1\nline2 $(x) `y` 'z'"))
    done = subprocess.run(["bash", "-n"], input=render_sbatch(cfg, job), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_weird_values_survive_sbatch_parsing():
    cfg = RunConfig(synthetic=True, sbatch_arg=["--comment=a \"b\" 'c' #d \\e"])
    job = SbatchJob(run_dir=f"/tmp/{WEIRD}", job_name="j 'x' \"y\" #z", nodes=1, gpus_per_node=0,
                    procs_per_node=1, python="/p", activate=None, rank_argv=("x",), node_argv=("y",),
                    endpoint_argv=("z",))
    words = sbatch_words(render_sbatch(cfg, job))
    assert words[0] == "--job-name=j 'x' \"y\" #z"
    assert f"--output={job.run_dir.replace('%', '%%')}/logs/slurm-%j.out" in words
    assert words[-1] == "--comment=a \"b\" 'c' #d \\e"


def test_activate_line_quotes_the_venv():
    assert activate_line({"VIRTUAL_ENV": "/a b/$(x)/venv/"}) == "source '/a b/$(x)/venv/bin/activate'"
    assert activate_line({}) is None


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("value,seconds", [("30", 1800), ("30:15", 1815), ("24:00:00", 86400), ("2-00", 172800),
                                           ("1-02:03", 93780), ("1-02:03:04", 93784), ("UNLIMITED", None)])
def test_time_formats(value, seconds):
    assert time_limit_seconds(value) == seconds


@pytest.mark.parametrize("kw,needle", [
    ({"time": "24h"}, "--time '24h'"), ({"time": "1:2:3:4"}, "--time"), ({"time": "-1"}, "--time"),
    ({"time": "00:04:00"}, "--signal-seconds 300"), ({"mem": "64GB"}, "--mem '64GB'"), ({"mem": "lots"}, "--mem"),
    ({"partition": "gpu a"}, "--partition"), ({"account": "x'y"}, "--account"),
    ({"qos": "q\nq"}, "--qos 'q\\nq' is not a SLURM name"),
    ({"sbatch_arg": ["-N2"]}, "--sbatch-arg '-N2'"), ({"sbatch_arg": ["constraint=a100"]}, "long option"),
    ({"sbatch_arg": ["--"]}, "--sbatch-arg"), ({"sbatch_arg": ["--nodes=3"]}, "use --nodes"),
    ({"sbatch_arg": ["--time=1:00:00"]}, "use --time"), ({"sbatch_arg": ["--a\n--b"]}, "line break"),
    ({"setup": ["module load a\nrm -rf /"]}, "--setup"), ({"cpus_per_gpu": 0}, "--cpus-per-gpu"),
    ({"signal_seconds": 0}, "--signal-seconds"), ({"signal_seconds": 70000}, "--signal-seconds"),
    ({"run_dir": "/tmp/a\nb"}, "--run-dir"), ({"run_dir": "/tmp/a\\b"}, "backslash"), ({"data": "/d\n"}, "--data"),
])
def test_validation_errors(kw, needle):
    """The SLURM options are checked by RunConfig.validate() like every other option (distrib/config/)."""
    cfg = RunConfig(synthetic=True, slurm=True, **kw)
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_valid_options_pass():
    RunConfig(synthetic=True, time="2-00:00:00", mem="500M", partition="gpu,gpu-long", account="proj_1",
              qos="normal", cpus_per_gpu=8, signal_seconds=600, sbatch_arg=["--constraint=a100", "--mail-type=END"],
              setup=["module load cuda"]).validate()
    for mem in ("0", "64G", "1T", "64g"):
        RunConfig(synthetic=True, mem=mem).validate()


def test_render_refuses_line_break_in_run_dir():
    cfg, job = make()
    with pytest.raises(ConfigError):
        render_sbatch(cfg, dataclasses.replace(job, run_dir="/tmp/a\nb"))


# ---------------------------------------------------------------- running the script with stubs

def _exe(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


STUB_SRUN = """#!/bin/bash
# records its argv, then runs the command once per task, sequentially, with the task's SLURM_* values
printf '%s\\0' "$@" > "$STUB_LOG/srun.argv"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do
  for ((task = 0; task < ${STUB_TASKS_PER_NODE:-1}; task++)); do
    SLURM_NODEID=$node SLURM_LOCALID=$task SLURM_PROCID=$((node * ${STUB_TASKS_PER_NODE:-1} + task)) "$@" || exit $?
  done
done
"""
STUB_SCONTROL = """#!/bin/bash
case "$1 $2" in
  "show hostnames") echo n1; echo n2 ;;
  requeue*) echo "$2" >> "$STUB_LOG/requeued" ;;
  *) exit 1 ;;
esac
"""
# The node payload (launch/node.py) runs for real, in the real interpreter, and execs this stub as its torchrun.
REAL_NODE = (f'if [ "$1 $2" = "-m launch.node" ]; then PYTHONPATH={shlex.quote(str(REPO))} exec '
             f'{shlex.quote(sys.executable)} -c "import runpy, sys; sys.executable = sys.argv.pop(1); '
             f'runpy.run_module(\'launch.node\', run_name=\'__main__\')" "$0" "${{@:3}}"; fi\n')
STUB_PYTHON = """#!/bin/bash
""" + REAL_NODE + """id=$SLURM_NODEID.$SLURM_LOCALID
printf '%s\\0' "$@" > "$STUB_LOG/python.$id.argv"
if [ -e "$DISTRAIN_STOP_FILE" ]; then touch "$STUB_LOG/stop_at_start.$id"; fi
env -0 > "$STUB_LOG/python.$id.env"
if [ -n "${STUB_WAIT_STOP:-}" ]; then  # like training: run until the stop file appears
  touch "$STUB_LOG/started"
  for _ in $(seq 100); do
    if [ -e "$DISTRAIN_STOP_FILE" ]; then sleep 0.2; touch "$STUB_LOG/finished.$id"; exit 0; fi  # checkpoint
    sleep 0.05
  done
  exit 9
fi
exit "${STUB_EXIT:-0}"
"""


@pytest.fixture
def stubs(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    log.mkdir()
    _exe(bin_dir / "srun", STUB_SRUN)
    _exe(bin_dir / "scontrol", STUB_SCONTROL)
    python = _exe(tmp_path / "py $(touch PWNED) 'q'" / "python", STUB_PYTHON)
    run_dir = tmp_path / WEIRD
    (run_dir / "logs").mkdir(parents=True)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), "SLURM_JOB_ID": "12345", "SLURM_NNODES": "2",
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_CPUS_PER_TASK": "8", "SLURM_CPUS_ON_NODE": "8"}
    return tmp_path, log, python, run_dir, env


def _start(tmp_path, text, env):
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    return subprocess.Popen(["bash", str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _argv(path: Path) -> list[str]:
    return path.read_text().split("\0")[:-1]


def _env(path: Path) -> dict[str, str]:
    return dict(item.split("=", 1) for item in path.read_text().split("\0") if "=" in item)


def test_torchrun_layout_runs_with_weird_paths(stubs):
    tmp_path, log, python, run_dir, env = stubs
    cfg, job = make(run_dir=str(run_dir), gpus=2, procs=2, python=str(python), max_restarts=1)
    proc = _start(tmp_path, render_sbatch(cfg, job), {**env, "TORCH_NCCL_DUMP_ON_TIMEOUT": "0"})
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert not list(tmp_path.rglob("PWNED")), "a user value was run as shell code"
    for node in (0, 1):  # each node's payload found its part (n1 is loopback here: SLURM's node order decides)
        argv = _argv(log / f"python.{node}.0.argv")
        assert argv == ["-m", "distrib.agent", "--nnodes", "2", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                        "n1:32345", "--rdzv-id", "12345", "--rdzv-conf", f"is_host={int(node == 0)}",
                        "--nproc-per-node", "2", "--max-restarts", "1", "--log-dir", f"{run_dir}/logs/torchrun",
                        "--redirects", "2", "-m", "distrib", "train", f"{run_dir}/config.toml"]
    rank_env = _env(log / "python.1.0.env")
    assert rank_env["DISTRAIN_STOP_FILE"] == f"{run_dir}/STOP"
    assert rank_env["OMP_NUM_THREADS"] == "4" and rank_env["SRUN_CPUS_PER_TASK"] == "8"
    assert rank_env["PYTHONUNBUFFERED"] == "1"
    # the node payload's Flight Recorder settings reach the ranks, a value of the job's own environment wins
    assert rank_env["TORCH_FR_BUFFER_SIZE"] == "2000"
    assert rank_env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == f"{run_dir}/logs/hang/nccl-trace-rank"
    assert rank_env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "0"
    assert not (log / "requeued").exists()


def test_srun_layout_runs_every_rank(stubs):
    tmp_path, log, python, run_dir, env = stubs
    cfg, job = make(run_dir=str(run_dir), gpus=2, procs=2, python=str(python), launcher="srun")
    proc = _start(tmp_path, render_sbatch(cfg, job), {**env, "STUB_TASKS_PER_NODE": "2", "SLURM_CPUS_ON_NODE": "2"})
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert not list(tmp_path.rglob("PWNED"))
    assert sorted(p.name for p in log.glob("python.*.argv")) == [f"python.{n}.{t}.argv" for n in (0, 1) for t in (0, 1)]
    assert _argv(log / "python.1.1.argv") == ["-u", *job.rank_argv]
    rank_env = _env(log / "python.1.1.env")
    assert (rank_env["MASTER_ADDR"], rank_env["MASTER_PORT"], rank_env["OMP_NUM_THREADS"]) == ("n1", "32345", "1")


def test_srun_layout_keeps_the_users_own_omp_num_threads(stubs):
    tmp_path, log, python, run_dir, env = stubs
    cfg, job = make(run_dir=str(run_dir), gpus=2, procs=2, python=str(python), launcher="srun")
    proc = _start(tmp_path, render_sbatch(cfg, job), {**env, "STUB_TASKS_PER_NODE": "2", "SLURM_CPUS_ON_NODE": "8",
                                                      "OMP_NUM_THREADS": "3"})
    assert proc.communicate(timeout=30)[0] is not None and proc.returncode == 0
    assert _env(log / "python.1.1.env")["OMP_NUM_THREADS"] == "3"  # as the torchrun layout's omp_threads does


@pytest.mark.parametrize("sig,restart_count,requeued", [
    (signal.SIGUSR1, None, True), (signal.SIGUSR1, "2", True), (signal.SIGUSR1, "3", False),  # the cap is 3
    (signal.SIGTERM, None, False),  # scancel: stop and checkpoint, but stay cancelled
])
def test_signal_stops_then_requeues_up_to_the_cap(stubs, sig, restart_count, requeued):
    tmp_path, log, python, run_dir, env = stubs
    cfg, job = make(run_dir=str(run_dir), gpus=0, procs=1, python=str(python), max_requeues=3)
    env = {**env, "STUB_WAIT_STOP": "1", **({"SLURM_RESTART_COUNT": restart_count} if restart_count else {})}
    (run_dir / "STOP").touch()  # left over from an earlier attempt: must not stop this one
    proc = _start(tmp_path, render_sbatch(cfg, job), env)
    deadline = time.monotonic() + 10
    while not (log / "started").exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.02)
    proc.send_signal(sig)
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out  # the stub ranks saw STOP and exited cleanly
    assert (log / "requeued").exists() == requeued, out
    assert (run_dir / "STOP").exists() != requeued  # removed for the requeued attempt
    assert not (log / "stop_at_start.0.0").exists()
    assert (log / "finished.1.0").exists(), "the script ended before the ranks finished their checkpoint"
    if requeued:
        assert (log / "requeued").read_text() == "12345\n" and "requeueing 12345" in out
    elif sig == signal.SIGUSR1:
        assert "not requeueing: 3 requeues done" in out


def test_rank_failure_is_the_exit_code_and_no_requeue(stubs):
    tmp_path, log, python, run_dir, env = stubs
    cfg, job = make(run_dir=str(run_dir), gpus=0, procs=1, python=str(python))
    proc = _start(tmp_path, render_sbatch(cfg, job), {**env, "STUB_EXIT": "3"})
    out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 3, out
    assert not (log / "requeued").exists()


# ---------------------------------------------------------------- submit / job_state (stub sbatch, squeue)

@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # only the stubs: the real sbatch may be installed
    return tmp_path


def test_submit_returns_the_id_and_scrubs_the_enclosing_job(fake_path, monkeypatch):
    _exe(fake_path / "bin" / "sbatch", f'#!/bin/bash\nexport -p > {fake_path}/env\necho "4242;cluster"\n')
    monkeypatch.setenv("SLURM_CPU_BIND", "cores")
    monkeypatch.setenv("SBATCH_PARTITION", "other")
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/slurm.conf")
    assert submit("/x/job.sbatch") == "4242"
    seen = (fake_path / "env").read_text()
    assert "SLURM_CONF=" in seen and "PATH=" in seen and "SLURM_CPU_BIND" not in seen and "SBATCH_PARTITION" not in seen
    assert submission_env({"SLURM_JOB_ID": "1", "HOME": "/h"}) == {"HOME": "/h"}


def test_submit_errors_are_one_line_with_sbatchs_words(fake_path):
    with pytest.raises(SlurmError, match="sbatch not found on PATH"):
        submit("/x/job.sbatch")
    _exe(fake_path / "bin" / "sbatch", "#!/bin/bash\necho 'sbatch: error: invalid partition specified: gpu' >&2\n"
                                       "echo 'sbatch: error: Batch job submission failed' >&2\nexit 1\n")
    with pytest.raises(SlurmError) as e:
        submit("/x/job.sbatch")
    assert "invalid partition specified: gpu" in str(e.value) and "\n" not in str(e.value)


def test_job_state_falls_back_to_sacct(fake_path):
    _exe(fake_path / "bin" / "squeue", "#!/bin/bash\necho RUNNING\n")
    assert job_state("7") == "RUNNING"
    _exe(fake_path / "bin" / "squeue", "#!/bin/bash\necho 'slurm_load_jobs error: Invalid job id' >&2; exit 1\n")
    _exe(fake_path / "bin" / "sacct", "#!/bin/bash\necho 'CANCELLED by 0'\n")
    assert job_state("7") == "CANCELLED"
    _exe(fake_path / "bin" / "sacct", "#!/bin/bash\necho 'accounting storage is disabled' >&2; exit 1\n")
    assert job_state("7") is None


def test_slurm_package_never_imports_torch():
    code = "import sys, slurm, slurm.sbatch, slurm.submit; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


# ---------------------------------------------------------------- the real two-node cluster (cluster.sh up)

needs_cluster = pytest.mark.skipif(not cluster_available(), reason="no SLURM cluster: bash tests/slurm/cluster.sh up")

CLUSTER_PYTHON = """#!/bin/bash
# a stand-in rank: records its argv per node; with WAIT, runs until the stop file appears (first attempt only)
""" + REAL_NODE + """printf '%s\\0' "$@" > "$(dirname "$0")/argv.$SLURM_NODEID.$SLURM_LOCALID.$SLURM_RESTART_COUNT"
if [ -n "${WAIT:-}" ] && [ -z "${SLURM_RESTART_COUNT:-}" ]; then
  touch "$(dirname "$0")/started"
  for _ in $(seq 300); do [ -e "$DISTRAIN_STOP_FILE" ] && exit 0; sleep 0.1; done
  exit 9
fi
"""


def _submit_on_cluster(shared, launcher, setup=()):
    run_dir = shared / "run 'x' $(touch PWNED) %j"
    (run_dir / "logs").mkdir(parents=True)
    python = _exe(shared / "bin" / "python", CLUSTER_PYTHON)
    cfg, job = make(run_dir=str(run_dir), gpus=0, procs=2 if launcher == "srun" else 1, python=str(python),
                    launcher=launcher, rank_argv=("-m", "distrib", "train", "a b"), max_requeues=1,
                    setup=list(setup))
    script = run_dir / "job.sbatch"
    script.write_text(render_sbatch(cfg, job))
    return run_dir, submit(str(script))


@needs_cluster
def test_cluster_runs_one_torchrun_per_node(tmp_path):
    run_dir, job_id = _submit_on_cluster(tmp_path, "torchrun")
    assert wait_job(job_id, timeout=60) == "COMPLETED", (run_dir / f"logs/slurm-{job_id}.out").read_text()
    for node in (0, 1):  # SLURM_NODEID expanded on each node by the real srun
        argv = _argv(tmp_path / "bin" / f"argv.{node}.0.")
        assert argv[argv.index("--rdzv-conf") + 1] == f"is_host={int(node == 0)}"
        assert argv[argv.index("--log-dir") + 1] == f"{run_dir}/logs/torchrun"
        assert argv[-4:] == ["-m", "distrib", "train", f"{run_dir}/config.toml"]
    assert not list(tmp_path.rglob("PWNED"))


@needs_cluster
def test_cluster_usr1_stops_requeues_and_restarts(tmp_path):
    run_dir, job_id = _submit_on_cluster(tmp_path, "srun", setup=["export WAIT=1"])
    deadline = time.monotonic() + 30
    while not (tmp_path / "bin" / "started").exists():
        assert time.monotonic() < deadline, f"job {job_id} never started: {job_state(job_id)}"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    assert wait_job(job_id, timeout=60) == "COMPLETED", (run_dir / f"logs/slurm-{job_id}.out").read_text()
    assert job_restarts(job_id) == 1
    ran = sorted(p.name for p in (tmp_path / "bin").glob("argv.*"))
    assert ran == [f"argv.{n}.{t}.{r}" for n in (0, 1) for t in (0, 1) for r in ("", "1")]
    assert "requeueing" in (run_dir / f"logs/slurm-{job_id}.out").read_text()


@needs_cluster
def test_cluster_scancel_stays_cancelled(tmp_path):
    run_dir, job_id = _submit_on_cluster(tmp_path, "srun", setup=["export WAIT=1"])
    deadline = time.monotonic() + 30
    while not (tmp_path / "bin" / "started").exists():
        assert time.monotonic() < deadline, f"job {job_id} never started: {job_state(job_id)}"
        time.sleep(0.2)
    subprocess.run(["scancel", job_id], check=True)
    deadline = time.monotonic() + 60
    while (state := job_state(job_id)) not in FINAL_STATES | {"PENDING"}:  # PENDING: it was requeued
        assert time.monotonic() < deadline, f"job {job_id} still {state}"
        time.sleep(0.2)
    assert (state, job_restarts(job_id)) == ("CANCELLED", 0)
