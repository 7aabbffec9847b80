"""Where a command's CPU goes, by kind of process: the test suite's cost, measured.

    python benchmarks/suite_cost.py                       # python -m pytest
    python benchmarks/suite_cost.py -- bash .ci/run       # CI, as a fresh clone runs it (CI=true)

Linux process accounting (acct(2), root) records every process that ends: its CPU time, and whether it ran a
new program or is a fork that never did. A poller reads each new process's command line from /proc (a fork's
is its parent's). The command's wall time and the machine's CPU come from /proc/stat; a 20-million-step
Python loop is timed before and after, since this machine's speed moves within the hour.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

# struct acct_v3 (linux/acct.h): flag, version, tty, exitcode, uid, gid, pid, ppid, btime, etime (float),
# utime, stime, mem, io, rw, minflt, majflt, swaps (comp_t each), comm
ACCT = struct.Struct("<BBHIIIIIIf8H16s")
AFORK = 0x01  # forked, never exec'd
TICKS = 100   # AHZ


def comp_t(value: int) -> float:
    """13-bit mantissa, 3-bit base-8 exponent."""
    return (value & 0x1FFF) << ((value >> 13) * 3)


# The machine's speed: a 20-million-step loop at a new interpreter's module level (as README's figures quote it)
LOOP = """
import time
t = time.perf_counter()
i = 0
for _ in range(20_000_000): i += 1
print(time.perf_counter() - t)
"""


def loop_seconds() -> float:
    return float(subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True).stdout)


def busy_ticks() -> int:
    with open("/proc/stat") as fh:
        user, nice, system = map(int, fh.readline().split()[1:4])
    return user + nice + system


def watch_commands(seen: dict, stop: threading.Event) -> None:
    while not stop.is_set():
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) not in seen:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        seen[int(pid)] = fh.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    pass
        time.sleep(0.25)


def kind(forked: bool, comm: str, command: str) -> str:
    python = "python" in command.split(" ", 1)[0]
    if comm.startswith("pt_data_worker"):
        return "loader workers"
    if forked:
        return "forked Python (ranks, forked agents, warm commands)" if python else "other forks"
    if "-m distrib.agent" in command or "-m launch.node" in command or "torch.distributed.run" in command:
        return "torchrun agents, new interpreters"
    if "multiprocessing.forkserver" in command:
        return "loader fork servers, new interpreters"
    if python:
        return "other Python, new interpreters (commands, tools, pytest)"
    return "other programs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument("--top", type=int, default=0, metavar="N",
                        help="also print the N costliest command lines of processes started as new interpreters")
    parser.add_argument("command", nargs="*", default=[sys.executable, "-m", "pytest"])
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("error: process accounting needs root; run as root", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    log = tempfile.NamedTemporaryFile(prefix="suite-cost-", suffix=".acct", delete=False).name
    before = loop_seconds()
    if libc.acct(log.encode()) != 0:
        print(f"error: acct({log}): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 2
    seen, stop = {}, threading.Event()
    poller = threading.Thread(target=watch_commands, args=(seen, stop), daemon=True)
    poller.start()
    ticks, started = busy_ticks(), time.monotonic()
    try:
        code = subprocess.call(args.command)
    finally:
        wall, cpu = time.monotonic() - started, (busy_ticks() - ticks) / os.sysconf("SC_CLK_TCK")
        libc.acct(None)
        stop.set()
    after = loop_seconds()

    rows = collections.defaultdict(lambda: [0, 0.0])
    commands = collections.defaultdict(lambda: [0, 0.0])  # a new interpreter's command line (trimmed) -> count, CPU
    with open(log, "rb") as fh:
        data = fh.read()
    os.unlink(log)
    for offset in range(0, len(data) - ACCT.size + 1, ACCT.size):
        f = ACCT.unpack_from(data, offset)
        flag, pid, utime, stime, comm = f[0], f[6], f[10], f[11], f[18].split(b"\0")[0].decode(errors="replace")
        seconds = (comp_t(utime) + comp_t(stime)) / TICKS
        row = rows[kind(bool(flag & AFORK), comm, seen.get(pid, ""))]
        row[0] += 1
        row[1] += seconds
        if not flag & AFORK and "python" in seen.get(pid, " ").split(" ", 1)[0]:
            line = commands[" ".join(seen[pid].split()[1:7])[:110]]
            line[0] += 1
            line[1] += seconds
    print(f"{' '.join(args.command)}: exit {code}, {wall:.0f} s wall, {cpu:,.0f} CPU-s (machine), "
          f"loop {before:.2f} s before, {after:.2f} s after")
    print(f"{'CPU-s':>8} {'processes':>9}  kind")
    for name, (count, seconds) in sorted(rows.items(), key=lambda kv: -kv[1][1]):
        print(f"{seconds:8.1f} {count:9d}  {name}")
    if args.top:
        print(f"{'CPU-s':>8} {'processes':>9}  new interpreters by command line (its first words)")
        for line, (count, seconds) in sorted(commands.items(), key=lambda kv: -kv[1][1])[:args.top]:
            print(f"{seconds:8.1f} {count:9d}  {line}")
    if args.json:
        print(json.dumps({"command": args.command, "exit": code, "wall_s": round(wall, 1), "cpu_s": round(cpu),
                          "loop_before_s": round(before, 2), "loop_after_s": round(after, 2),
                          "kinds": {k: {"processes": n, "cpu_s": round(c, 1)} for k, (n, c) in rows.items()}}))
    return code


if __name__ == "__main__":
    sys.exit(main())
