"""Watching a long run: step-level figures in the real TensorBoard (read over its HTTP API), one continuous
curve across stop / resume, a slowed rank named as the straggler, and `distrain status`'s live line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import TINY, assert_ok, distrain, metrics, rank_pids, start_distrain
from test_tensorboard import free_port, get_json, served

# 96 train images, 4 per process on 2 processes: 12 steps per epoch, a figure every step
SMALL_STEPS = [*TINY, "--batch-size", "4", "--log-interval", "1"]


def launch_args(data, run_dir, *extra) -> list[str]:
    return ["launch", "--gpus", "0", "--procs", "2", "--data", str(data), "--run-dir", str(run_dir), *SMALL_STEPS,
            *extra]


def start(args: list[str]):
    return start_distrain(*args, pipe_stdout=True)


def wait_until(check, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def live_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "live.json").read_text())["step"]
    except (OSError, ValueError):
        return 0


def stop_after(args: list[str], run_dir: Path, step: int) -> str:
    """Run until live.json shows `step`, then touch RUN_DIR/STOP; the launch's output."""
    proc = start(args)
    try:
        # polled often: a tiny step takes ~40 ms, and the stop must land well inside the 12-step epoch
        wait_until(lambda: live_step(run_dir) >= step or proc.poll() is not None, 240, f"step {step}", every=0.02)
        (run_dir / "STOP").touch()
        out = proc.communicate(timeout=240)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, out  # 3: stopped, resumable
    return out


@contextlib.contextmanager
def tensorboard(runs_dir: Path):
    """The real TensorBoard over runs_dir (tests/test_tensorboard.py served); yields get(path)."""
    with served(runs_dir) as server:
        yield lambda path: get_json(f"{server.base}{path}")


def scalar_tags(get, run: str, want: set[str]) -> dict:
    def ready():
        try:
            tags = get("/data/plugin/scalars/tags").get(run, {})
        except OSError:
            return None
        return tags if want <= set(tags) else None
    return wait_until(ready, 90, f"tags {want} of {run}")


def test_step_figures_make_one_curve_across_a_stop_and_a_lost_checkpoint(imagefolder, tmp_path):
    run_dir = tmp_path / "runs" / "watched"
    args = launch_args(imagefolder, run_dir, "--epochs", "1", "--log-grad-norm")
    stop_after(args, run_dir, 3)
    first = json.loads((run_dir / "position.json").read_text())
    assert 0 < first["batch"] < 12, first
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("checkpoints/last.pt", "position.json"):
        shutil.copy(run_dir / name, kept / Path(name).name)
    # a second attempt writes points past that checkpoint, then "dies": its checkpoint is lost
    stop_after(args, run_dir, first["batch"] + 2)
    assert json.loads((run_dir / "position.json").read_text())["batch"] > first["batch"]
    shutil.copy(kept / "last.pt", run_dir / "checkpoints" / "last.pt")
    shutil.copy(kept / "position.json", run_dir / "position.json")
    out = distrain(*args)
    assert_ok(out)
    assert f"resuming at epoch 1, step {first['batch']}" in out.stdout

    step_tags = {"step/loss", "step/loss_max_rank", "step/lr", "step/images_per_sec", "step/step_time",
                 "step/data_wait_share", "step/slowest_over_median", "memory/rss_gib_max",
                 "step/grad_norm"}  # --log-grad-norm
    with tensorboard(run_dir.parent) as get:
        run = "watched/tb"
        scalar_tags(get, run, step_tags)
        for tag in sorted(step_tags):
            points = get(f"/data/plugin/scalars/scalars?tag={tag}&run={run}")
            steps = [step for _, step, _ in points]
            assert steps == list(range(1, 13)), (tag, steps)  # every step once, inside the one epoch
        share = get(f"/data/plugin/scalars/scalars?tag=step/data_wait_share&run={run}")
        assert all(0 <= value <= 1 for _, _, value in share)
        epoch_share = get(f"/data/plugin/scalars/scalars?tag=train/data_wait_share&run={run}")
        assert [step for _, step, _ in epoch_share] == [0]
    # TensorBoard's data server keeps a restarted tag in step order by itself; the Python reader shows
    # whether the lost attempt's points were purged from the files (steps past the checkpoint, written twice)
    assert [e.step for e in tb_events(run_dir).Scalars("step/loss")] == list(range(1, 13))

    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= row["data_wait_share"] <= 1 and row["node_cores"] >= 1
    assert "of step time" in out.stdout  # the epoch's verdict line
    assert "--decode device" not in out.stdout  # GPU decoding is not offered to a CPU run
    status = distrain("status", run_dir)
    assert_ok(status)
    assert "global step 12" in status.stdout and "img/s" in status.stdout and "data wait" in status.stdout
    assert "last step figures" in status.stdout and "ETA" not in status.stdout  # a finished run has no ETA
    assert "slowest rank" in status.stdout and "GiB resident" in status.stdout
    assert "of step time" in status.stdout  # the summary repeats the verdict


def rank1_line(log: Path) -> str | None:
    """The first line naming rank 1 (before the competitor starts, noise may name another rank for a while)."""
    return next((s for s in log.read_text().splitlines() if "straggler: rank 1 " in s), None)


def pin(pid: int, core: int) -> None:
    """Every thread of pid onto one core."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {core})


def busy_loop(core: int) -> subprocess.Popen:
    """A spinning process on `core` at nice -10: it takes ~90% of that core from a nice-0 rank, so the slowed
    rank stands out even while another test loads the other core."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.setpriority(os.PRIO_PROCESS, proc.pid, -10)
    os.sched_setaffinity(proc.pid, {core})
    return proc


def test_a_rank_slowed_by_a_cpu_competitor_is_named_as_the_compute_straggler(imagefolder, tmp_path):
    if len(os.sched_getaffinity(0)) < 2:
        import pytest
        pytest.skip("needs 2 cores: one per rank")
    run_dir = tmp_path / "slow-rank"
    proc = start(launch_args(imagefolder, run_dir, "--epochs", "20", "--workers", "0"))  # STOP ends it
    competitor = None
    try:
        wait_until(lambda: live_step(run_dir) >= 1 or proc.poll() is not None, 240, "the first step")
        ranks = rank_pids(run_dir / "config.toml")
        assert set(ranks) == {0, 1}, ranks
        pin(ranks[0], 0)
        pin(ranks[1], 1)
        competitor = busy_loop(1)  # rank 1 now gets a tenth of its core
        log = run_dir / "logs" / "rank0.log"
        line = wait_until(lambda: rank1_line(log) or proc.poll() is not None, 240, "a straggler line")
        running = distrain("status", run_dir)
        (run_dir / "STOP").touch()
        out = proc.communicate(timeout=240)[0]
    finally:
        if competitor:
            competitor.kill()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 3), out
    assert isinstance(line, str), out
    host = os.uname().nodename
    assert f"straggler: rank 1 on host {host}" in line and "compute" in line, line
    assert "straggler: rank 1" in out  # rank 0 says it on the console too
    # the live line names the newest interval's slowest rank (an epoch's end can make it rank 0, which validates
    # and saves): that it names one is the check; which one is the straggler line's job, above
    assert f"{run_dir}: running" in running.stdout and "slowest rank " in running.stdout, running.all
    assert "newest step figures" in running.stdout and "of training steps" in running.stdout  # with its ETA


def processes_of_rank(rank_pid: int) -> list[int]:
    """The fork server and the loader workers a rank started: the processes below it."""
    return [pid for pid in process_tree(rank_pid) if pid != rank_pid]


def throttle(pids_of, stop_event, on: float = 0.02, off: float = 0.38) -> None:
    """Run the processes pids_of() returns 5% of the time (SIGSTOP / SIGCONT, as a CPU quota would), until
    stop_event; they are left running."""
    import signal

    while not stop_event.is_set():
        pids = pids_of()
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        time.sleep(off)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        time.sleep(on)


def test_a_rank_whose_loader_is_starved_is_named_as_the_data_straggler(tmp_path):
    """Rank 1's loader workers (and their fork server) get 5% of a CPU (stopped and continued from outside,
    as a cgroup quota would do); the training processes themselves run as usual."""
    import threading

    from imagefolder import make_imagefolder

    data = make_imagefolder(tmp_path / "big-images", size=768)  # decoding costs something
    run_dir = tmp_path / "slow-data"
    proc = start(launch_args(data, run_dir, "--epochs", "3", "--workers", "1"))
    done = threading.Event()
    throttler = None
    try:
        wait_until(lambda: live_step(run_dir) >= 1 or proc.poll() is not None, 240, "the first step")
        ranks = rank_pids(run_dir / "config.toml")
        assert set(ranks) == {0, 1}, ranks
        assert processes_of_rank(ranks[1]), "no loader process of rank 1 found"
        throttler = threading.Thread(target=throttle, args=(lambda: processes_of_rank(ranks[1]), done))
        throttler.start()
        log = run_dir / "logs" / "rank0.log"
        line = wait_until(lambda: rank1_line(log) or proc.poll() is not None, 240, "a straggler line")
        done.set()
        throttler.join()
        (run_dir / "STOP").touch()
        out = proc.communicate(timeout=240)[0]
    finally:
        done.set()
        if throttler:
            throttler.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 3), out
    assert isinstance(line, str), out
    assert f"straggler: rank 1 on host {os.uname().nodename}" in line and "waits on data" in line, line


def process_tree(pid: int) -> list[int]:
    """pid and every process below it (a node: its launcher, the torchrun agent, the rank, its loader workers)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_logged(args: list[str], log: Path):
    """A node's launch, its output to a file (a pipe nobody reads would fill up during a long wait)."""
    with log.open("w") as out:
        return start_distrain(*args, stdout=out)


def live(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "live.json").read_text())
    except (OSError, ValueError):
        return {}


def pending_sigterm(pid: int) -> bool:
    """Whether pid holds a SIGTERM it has not handled yet (it is stopped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & 1 << (signal.SIGTERM - 1) for mask in masks)


def tb_events(run_dir: Path):
    """The run's event files as TensorBoard's Python reader sees them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return events


def test_an_elastic_run_losing_and_regaining_a_node_makes_one_curve(imagefolder, tmp_path):
    """Two nodes on loopback (1 process each, --nodes 1:2). Every process of node B is killed in epoch 1 (after
    the points of steps 13-15 are written): A goes on as a world of one from last.pt (step 12). B starts again,
    and the world is 2 to the end. TensorBoard has one step/loss curve, every step once, and the world size
    along it is 2, then 1, then 2."""
    run_dir = tmp_path / "runs" / "elastic"
    port = free_port()
    args = ["launch", "--nodes", "1:2", "--gpus", "0", "--procs", "1", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--max-restarts", "3", "--data", str(imagefolder), "--run-dir", str(run_dir), "--epochs", "3",
            "--rdzv-last-call", "15",  # B's start (imports) fits in it; the world of one forms 15 s after the loss
            *SMALL_STEPS]  # 12 steps an epoch in a world of 2, 24 in a world of 1
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "b-again")}
    a = start_logged(args, logs["a"])  # hosts the rendezvous store: on loopback the first agent up binds the port
    b = b_again = survivor = None
    try:
        wait_until(lambda: listening(port) or a.poll() is not None, 120, "node A's rendezvous store")
        b = start_logged(args, logs["b"])
        wait_until(lambda: live(run_dir).get("step", 0) >= 15 or a.poll() is not None, 240, "step 15")
        # B is frozen at once, mid-epoch (A waits for it in the all-reduce), so that the epoch cannot end
        # while the event files are read: on a loaded machine that read outlasts the epoch's last 9 steps
        tree = process_tree(b.pid)
        for pid in tree:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        # points past last.pt (step 12) are on disk before the node is lost: the restart must drop them
        assert max(e.step for e in tb_events(run_dir).Scalars("step/loss")) >= 15
        assert [r["world_size"] for r in metrics(run_dir)] == [2]  # still in epoch 1
        for pid in tree:  # the node is lost: launcher, agent, rank and loader workers at once
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        b.wait()
        wait_until(lambda: [r["world_size"] for r in metrics(run_dir)][-1:] == [1] or a.poll() is not None, 240,
                   "an epoch of the world of one")
        # A would outrun B's start (seconds of imports) and finish alone: it waits, stopped, until B is back and
        # A's agent asks its rank to stop for the new round of the rendezvous
        survivor = rank_pids(run_dir / "config.toml")[0]
        os.kill(survivor, signal.SIGSTOP)
        b_again = start_logged(args, logs["b-again"])
        wait_until(lambda: pending_sigterm(survivor) or b_again.poll() is not None, 240, "the new round")
        os.kill(survivor, signal.SIGCONT)
        a.wait(timeout=240)
        b_again.wait(timeout=240)
    finally:
        if survivor:
            with contextlib.suppress(OSError):
                os.kill(survivor, signal.SIGCONT)
        for proc in (a, b, b_again):
            if proc and proc.poll() is None:
                proc.kill()
    out_a, out_b = logs["a"].read_text(), logs["b-again"].read_text()
    assert a.returncode == 0, out_a[-4000:]
    assert b_again.returncode == 0, out_b[-4000:]
    assert "world size changed 2 -> 1" in out_a and "world size changed 1 -> 2" in out_a + out_b
    rows = metrics(run_dir)
    assert [(r["epoch"], r["world_size"]) for r in rows] == [(0, 2), (1, 1), (2, 2)], rows
    last = live(run_dir)["step"]

    with tensorboard(run_dir.parent) as get:
        run = "elastic/tb"
        scalar_tags(get, run, {"step/loss", "step/world_size"})

        def points(tag):  # once TensorBoard has read every event file: the run's last step is there
            found = get(f"/data/plugin/scalars/scalars?tag={tag}&run={run}")
            return found if found and max(step for _, step, _ in found) == last else None
        loss = wait_until(lambda: points("step/loss"), 90, "the last step in TensorBoard")
        sizes = wait_until(lambda: points("step/world_size"), 90, "the last step in TensorBoard")
    steps = [step for _, step, _ in loss]
    assert steps == list(range(1, last + 1)), steps  # every step once, in order: the lost points were dropped
    # TensorBoard's data server drops a restarted tag's points by their step order; its Python reader (where the
    # data server is missing) only by the purge marker a restarted writer leaves: it must see the same curve
    assert [e.step for e in tb_events(run_dir).Scalars("step/loss")] == steps
    assert [step for _, step, _ in sizes] == steps
    changes = [(step, int(size)) for i, (_, step, size) in enumerate(sizes) if i == 0 or size != sizes[i - 1][2]]
    assert [size for _, size in changes] == [2, 1, 2], changes
    assert changes[1][0] == 13, changes  # the world of one went on from last.pt (step 12), not from step 15


def test_the_input_verdict_asks_for_more_workers_only_where_cores_are_spare():
    from distrib.words import input_verdict

    assert ("input-bound. Try more --workers (now 1 per process; 16 cores here for 2 training processes: up to 7 "
            "each); --decode device") in input_verdict(0.34, workers=1, cores=16, procs=2)
    full = input_verdict(0.34, workers=4, cores=2, procs=2)
    assert ("input-bound. More --workers would not help: 4 per process already use all 2 cores here for 2 training "
            "processes. Try --decode device") in full
    assert input_verdict(0.1, workers=4, cores=2, procs=2).endswith("10% of step time: not input-bound")
    assert "input-bound. Loader workers would not help: 2 cores here for 2 training processes leave none to spare." \
        in input_verdict(0.34, workers=0, cores=2, procs=2)
    on_cpu = input_verdict(0.34, workers=4, cores=2, procs=2, gpu=False)  # a CPU run: no GPU decoding to offer
    assert "--decode device" not in on_cpu and on_cpu.endswith("Try `distrain pack DATA OUT` (shards read faster "
                                                                "than many small files)")
