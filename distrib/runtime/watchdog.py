"""Hangs that explain themselves.

Every rank records its step and where it can be probed in the run's TCP store. When a collective times
out (--dist-timeout), the ranks still alive find the rank that never reported the timeout (it is not
waiting in the collective: it is the one that hangs), probe its host, and say which rank, on which host,
and whether it is stuck (reachable), gone (refused) or cut off (unreachable).

Evidence goes to RUN_DIR/logs/hang/ (RunPaths names the files): each rank arms a faulthandler
timer at every step, so a rank that makes no step for --dist-timeout seconds writes the stacks of all its
threads itself, from a C thread that needs no GIL (a rank blocked in I/O or a lock too; a stopped one when
it continues). On the timeout, ranks that can still act add the error and their Flight Recorder trace.
"""

from __future__ import annotations

import datetime
import faulthandler
import logging
import os
import socket
import time
import traceback

import torch.distributed as dist

from distrib.files import write_atomic
from distrib.paths import RunPaths
from distrib.runtime.env import DistEnv
from distrib.runtime.process_group import store_scope

log = logging.getLogger("distrain")
PROBE_SECONDS = 3.0  # a TCP connect to a live host answers in milliseconds, even when the process is stopped


class HungRankError(RuntimeError):
    """A collective timed out; the message names the rank(s) that stopped, their host and their stack file."""

    user_facing = True


class Heartbeat:
    def __init__(self, env: DistEnv, timeout_s: int, run_dir: str):
        self.env, self.timeout_s, self.run_dir, self.store = env, timeout_s, run_dir, None
        self.stack_path = self.trace_path = self._stack_fh = self._probe = None
        self._beat_at = time.monotonic()
        paths = RunPaths(run_dir)
        if env.is_distributed and env.world_size > 1 and "MASTER_ADDR" in os.environ:
            master = os.environ["MASTER_ADDR"]
            store = dist.TCPStore(master, int(os.environ["MASTER_PORT"]), is_master=False,
                                  timeout=datetime.timedelta(seconds=30), wait_for_workers=False)
            self.store = dist.PrefixStore(f"distrain/heartbeat/{store_scope(env)}/", store)
            addr, port = self._listen(master)
            self.stack_path = paths.hang_stack(env.rank, addr, env.restart_count)
            self.trace_path = paths.hang_trace(env.rank, env.restart_count)
            os.makedirs(paths.hangs, exist_ok=True)
            self._stack_fh = open(self.stack_path, "w")
            self.store.set(f"where/{env.rank}", f"{addr}:{port} {self.stack_path}")  # probe here; stacks there

    def _listen(self, master: str) -> tuple[str, int]:
        """A socket that is never accepted: the kernel completes a probe's connect while the process lives,
        even stopped, refuses it once the process is gone, and cannot answer at all when the host is cut."""
        self._probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._probe.bind(("", 0))
        self._probe.listen(64)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((master, 9))  # picks the route to the store's host; sends nothing
                addr = s.getsockname()[0]
        except OSError:
            addr = socket.gethostname()
        return addr, self._probe.getsockname()[1]

    def beat(self, step: int) -> None:
        if self.store is not None:
            self.store.set(str(self.env.rank), str(step))
            self._beat_at = time.monotonic()
            faulthandler.dump_traceback_later(self.timeout_s, file=self._stack_fh)

    def pause(self) -> None:
        """Between epochs (validation, checkpoints) there are no steps: no stack for taking long there."""
        if self._stack_fh is not None:
            faulthandler.cancel_dump_traceback_later()

    def close(self) -> None:
        self.pause()
        for thing in (self._stack_fh, self._probe):
            if thing is not None:
                thing.close()
        if self._stack_fh is not None and os.path.getsize(self.stack_path) == 0:
            os.remove(self.stack_path)  # nothing hung here

    def steps(self) -> dict[int, int]:
        """Last step each rank reported (-1: never reported)."""
        out = {}
        for rank in range(self.env.world_size):
            key = str(rank)
            out[rank] = int(self.store.get(key)) if self.store.check([key]) else -1
        return out

    def explain(self, error: Exception) -> HungRankError | None:
        """A HungRankError naming the hung rank(s) if `error` is a collective timeout, else None.

        Every rank that timed out says so in the store and waits a moment for the others: a rank that
        never says so is not waiting in the collective at all; it is the one that hangs.
        """
        text = str(error).lower()
        if self.store is None:
            return None
        if not ("timed out" in text or "timeout" in text):
            self._write_overdue_stack(error)
            return None
        self._write_evidence(error)
        try:
            silent = self._ranks_not_reporting_a_timeout()
            steps = self.steps()
            where = {r: self.store.get(f"where/{r}").decode() for r in silent}
        except Exception:  # the store itself may be gone with its host; then say what we know
            return HungRankError(f"a collective timed out after {self.timeout_s} s (--dist-timeout); "
                                 f"a peer of rank {self.env.rank} stopped answering, and so did the store's host "
                                 f"{os.environ.get('MASTER_ADDR')}. Stacks: {RunPaths(self.run_dir).hangs}")
        if not silent:
            return HungRankError(f"a collective timed out after {self.timeout_s} s (--dist-timeout) on every "
                                 "rank: the network between them, or ranks waiting in different collectives")
        probes = {r: where[r].split(" ", 1) for r in silent}  # "addr:port stack-file"
        names = "; ".join(f"rank {r} (at step {steps[r]}) on {probes[r][0].rpartition(':')[0]} {_probe(probes[r][0])}"
                          for r in silent)
        first = silent[0]
        message = (f"a collective timed out after {self.timeout_s} s (--dist-timeout): {names}; the other ranks "
                   f"were waiting for it. Its stack: {probes[first][1]} (written by rank {first} itself if it can "
                   f"still run), its log: logs/rank{first}.log")
        self._write_explanation(message)
        return HungRankError(message)

    def _write_overdue_stack(self, error: Exception) -> None:
        """A rank that was stopped past --dist-timeout and then continued finds its peers gone: its first
        act may be this error, before the faulthandler timer's thread runs. Its stack then comes from here."""
        self.pause()
        stuck_s = time.monotonic() - self._beat_at
        if self._stack_fh is None or stuck_s <= self.timeout_s or os.path.getsize(self.stack_path) > 0:
            return
        self._stack_fh.write(f"Timeout: rank {self.env.rank} made no step for {stuck_s:.0f} s (--dist-timeout "
                             f"{self.timeout_s}); where it was when it continued, and what it met then:\n")
        self._stack_fh.writelines(traceback.format_exception(error))
        self._stack_fh.flush()

    def _write_evidence(self, error: Exception) -> None:
        """This rank's stacks and error, and its Flight Recorder trace, under RUN_DIR/logs/hang/."""
        self.pause()
        fh = self._stack_fh
        fh.write(f"\n--- rank {self.env.rank} gave up waiting at {time.strftime('%H:%M:%S')}: {error}\n")
        fh.writelines(traceback.format_exception(error))
        fh.flush()
        faulthandler.dump_traceback(file=fh, all_threads=True)
        fh.flush()
        try:
            import torch._C._distributed_c10d as c10d

            dump = c10d._dump_nccl_trace if dist.get_backend() == "nccl" else c10d._dump_fr_trace
            trace = named_as_its_entries(dump())
        except Exception as e:  # Flight Recorder is not in every torch build nor for every backend
            log.warning("no Flight Recorder trace: %s", e)
            return
        os.makedirs(os.path.dirname(self.trace_path), exist_ok=True)
        with open(self.trace_path, "wb") as out:
            out.write(trace)

    def _write_explanation(self, message: str) -> None:
        """Every rank that explains writes the same line; the launcher and `distrain status` show it."""
        write_atomic(RunPaths(self.run_dir).hang_explanation, message + "\n")

    def _ranks_not_reporting_a_timeout(self, grace_s: float = 5.0) -> list[int]:
        self.store.set(f"timedout/{self.env.rank}", "1")
        keys = {r: f"timedout/{r}" for r in range(self.env.world_size)}
        deadline = time.monotonic() + grace_s
        while True:
            silent = [r for r, key in keys.items() if not self.store.check([key])]
            if not silent or time.monotonic() > deadline:
                return silent
            time.sleep(0.2)


def named_as_its_entries(trace: bytes) -> bytes:
    """A Flight Recorder dump whose group config fr_trace can match to its entries. gloo's dump records the
    default group's config under the name '' while its entries name the group '0', and fr_trace then stops
    with KeyError ('0', 0); the config is renamed as the entries name it. (Our own bytes, just dumped.)"""
    import pickle

    dump = pickle.loads(trace)
    config, named = dump.get("pg_config", {}), {tuple(e["process_group"]) for e in dump.get("entries", [])}
    if "" in config and len(named) == 1:
        name, desc = next(iter(named))
        if name not in config:
            config[name] = {**config.pop(""), "name": name, "desc": desc}
            return pickle.dumps(dump)
    return trace


def _probe(where: str) -> str:
    """What a TCP connect to a rank's probe socket says about it, as the end of a sentence."""
    host, _, port = where.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_SECONDS):
            return ("is hung: its process is alive but makes no progress (stuck in data loading, I/O or a "
                    "deadlock, or stopped)")
    except ConnectionRefusedError:
        return "is gone: its process ended (killed or crashed; see its log)"
    except OSError:
        return (f"is unreachable: host {host} dropped off the network or went down "
                f"(no answer within {PROBE_SECONDS:g} s)")
