"""Test hosts: separate network stacks on one machine (Linux network namespaces, as root).

    with NetHosts(2, dead_end={1}) as (a, b):     # b also has eth0 on a bridge that reaches no one
        a.popen([...], log)  ;  b.run([...])        # runs `ip netns exec HOST ...`
        b.cut()  ;  b.restore()                      # its cable pulled and plugged back (link down/up)

Each host is a namespace with a veth `eth1` on a private bridge and an address 10.77.0.N/24; the addresses
exist only inside these namespaces, so tests send traffic nowhere but there and loopback. Names carry
the owning pid (dtn<PID>_...): `clean_leftovers()` (and tests/netns.sh) removes those of dead processes,
so a killed test run leaves nothing behind for long, and parallel test runs never touch each other's.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "dtn"
SUBNET = "10.77.0"       # the bridge every host reaches the others on
DEAD_END = "10.77.1"     # a second interface's network: a bridge with nobody else on it
_OWNER = re.compile(rf"^{PREFIX}(\d+)_")
_sets = itertools.count()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@functools.cache
def unavailable() -> str | None:
    """Why test hosts cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"{PREFIX}{os.getpid()}_probe"
    try:
        made = _ip("netns", "add", probe, check=False)
    except FileNotFoundError:
        return "iproute2 (the `ip` command) is not installed"
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Host:
    def __init__(self, ns: str, addr: str, cable: str, ifname: str):
        self.ns, self.addr, self.cable, self.ifname = ns, addr, cable, ifname

    def argv(self, argv: list) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *map(str, argv)]

    def popen(self, argv: list, log: Path, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), env={**os.environ, **(env or {})}, stdout=log.open("w"),
                                stderr=subprocess.STDOUT)

    def run(self, argv: list, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), capture_output=True, text=True, timeout=timeout)

    def distrain(self, *args, log: Path):
        """`distrain ARGS` on this host (a process in its network namespace), as subprocess.Popen starts it."""
        from conftest import start_distrain

        with log.open("w") as out:
            return start_distrain(*args, stdout=out, netns=self.ns)

    def cut(self) -> None:
        """Pull the cable: the bridge side of this host's veth goes down; its packets go nowhere."""
        _ip("link", "set", self.cable, "down")

    def restore(self) -> None:
        _ip("link", "set", self.cable, "up")

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.ns, check=False).stdout.split()]

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


class NetHosts:
    """N hosts on one bridge; `dead_end` hosts get a first interface (eth0) that reaches nobody."""

    def __init__(self, n: int, dead_end: set[int] = frozenset()):
        self.n, self.dead_end = n, set(dead_end)
        self.tag = f"{PREFIX}{os.getpid()}_{next(_sets) % 16:x}"  # interface names: 15 chars at most
        self.hosts: list[Host] = []
        self.bridges: list[str] = []

    def __enter__(self) -> list[Host]:
        clean_leftovers()
        try:
            self._make()
        except BaseException:
            self.remove()
            raise
        return self.hosts

    def __exit__(self, *exc) -> None:
        self.remove()

    def _bridge(self, suffix: str) -> str:
        name = f"{self.tag}{suffix}"
        _ip("link", "add", name, "type", "bridge")
        _ip("link", "set", name, "up")
        self.bridges.append(name)
        return name

    def _plug(self, ns: str, bridge: str, outside: str, inside: str, addr: str) -> None:
        """A veth from the bridge into the namespace, named `inside` there, with `addr`/24."""
        _ip("link", "add", outside, "type", "veth", "peer", "name", f"{outside}p")
        _ip("link", "set", f"{outside}p", "netns", ns)
        _ip("-n", ns, "link", "set", f"{outside}p", "name", inside)
        _ip("link", "set", outside, "master", bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inside)
        _ip("-n", ns, "link", "set", inside, "up")

    def _make(self) -> None:
        main = self._bridge("b")
        dead = self._bridge("d") if self.dead_end else None
        for i in range(self.n):
            ns = f"{self.tag}h{i}"
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            if i in self.dead_end:  # created first: the lower ifindex, what a naive choice would take
                self._plug(ns, dead, f"{self.tag}{i}d", "eth0", f"{DEAD_END}.{i + 1}")
            self._plug(ns, main, f"{self.tag}{i}m", "eth1", f"{SUBNET}.{i + 1}")
            self.hosts.append(Host(ns, f"{SUBNET}.{i + 1}", f"{self.tag}{i}m", "eth1"))
        _wait_for_carrier(self.hosts)

    def remove(self) -> None:
        _remove(f"^{re.escape(self.tag)}")


def _wait_for_carrier(hosts: list[Host], timeout: float = 10) -> None:
    """A fresh bridge port may take a moment to forward (no STP here, but carrier comes up async)."""
    deadline = time.monotonic() + timeout
    for h in hosts:
        while _ip("-n", h.ns, "-br", "link", "show", h.ifname, check=False).stdout.find("UP") < 0:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)


def _remove(pattern: str, owner_alive=lambda pid: False) -> None:
    """Kill the processes in matching namespaces, delete the namespaces, then the links (bridges)."""
    regex = re.compile(pattern)
    for ns in _ip("netns", "list", check=False).stdout.split("\n"):
        name = ns.split(" ")[0]
        if name and regex.search(name) and not _alive_owner(name, owner_alive):
            for pid in _ip("netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name and regex.search(name) and not _alive_owner(name, owner_alive):
            _ip("link", "del", name, check=False)


def _alive_owner(name: str, owner_alive) -> bool:
    m = _OWNER.match(name)
    return bool(m) and owner_alive(int(m.group(1)))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def clean_leftovers() -> None:
    """Remove test hosts whose owning process is gone (a killed test run); never a live run's."""
    _remove(f"^{PREFIX}\\d+_", owner_alive=_pid_alive)


if __name__ == "__main__":  # python tests/netns.py clean
    if sys.argv[1:] == ["clean"] and unavailable() is None:
        clean_leftovers()
