"""Network facts of this node, as a multi-node launch needs them. Torch-free, read once per launch.

Which local interface and address route to the rendezvous host (`ip -j route get`), whether an address is
one of this node's own (`ip -j addr`), what the local hostname resolves to. Without iproute2 it falls back
to socket tricks (a connected UDP socket learns its source address; nothing is sent).

Why it matters (reference/launcher_anchors.md C.1-C.3, C.8): torchrun decides who hosts the c10d store by
comparing the endpoint with the hostname, and advertises `socket.getfqdn()` to the other nodes; gloo binds
to whatever the hostname resolves to. On a node whose name resolves to 127.0.1.1 (Debian's /etc/hosts) or
to a management NIC, both are wrong. The fix is to say it explicitly: `--rdzv-conf is_host=0|1`,
`--local-addr ADDR` and GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME, all derived from the route.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

from launch.torchrun import NodeRole


@dataclass(frozen=True)
class NodeNet:
    """How this node takes part in a c10d rendezvous at `endpoint_host`."""
    endpoint_host: str
    endpoint_addrs: tuple[str, ...]   # what the endpoint resolves to here
    is_host: bool                     # one of this node's interfaces carries the endpoint address
    local_addr: str                   # the address other nodes reach this one at
    ifname: str | None                # the interface carrying local_addr
    hostname: str
    hostname_addrs: tuple[str, ...]   # what this node's own name resolves to

    @property
    def hostname_is_loopback(self) -> bool:
        return only_loopback(self.hostname_addrs)

    def role(self) -> NodeRole:
        return NodeRole(is_host=self.is_host, local_addr=self.local_addr, ifname=self.ifname)

    def describe(self) -> str:
        role = "hosts the rendezvous" if self.is_host else f"joins the rendezvous at {self.endpoint_host}"
        text = f"this node {role} as {self.local_addr}" + (f" on {self.ifname}" if self.ifname else "")
        if self.hostname_is_loopback:
            text += f" (its name {self.hostname} resolves to {', '.join(self.hostname_addrs)}, loopback)"
        return text


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def only_loopback(addrs) -> bool:
    """A name that resolves (addrs) to loopback alone: no other machine reaches this one by it."""
    return bool(addrs) and all(is_loopback(a) for a in addrs)


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def resolve(host: str) -> tuple[str, ...]:
    """Addresses `host` resolves to here (IPv4 first), () if it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return ()
    addrs = dict.fromkeys(i[4][0] for i in infos if i[0] == socket.AF_INET)
    addrs.update(dict.fromkeys(i[4][0] for i in infos if i[0] == socket.AF_INET6))
    return tuple(addrs)


def _ip_json(*args: str) -> list[dict] | None:
    if not shutil.which("ip"):
        return None
    try:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=5)
        return json.loads(out.stdout) if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def interfaces() -> dict[str, list[str]]:
    """{interface name: [its addresses]} for the interfaces that are up."""
    links = _ip_json("addr", "show", "up")
    if links is not None:
        return {link["ifname"]: [a["local"] for a in link.get("addr_info", []) if "local" in a]
                for link in links if "ifname" in link}  # iproute2 6.1 prints {} for some links
    return {name: [addr] for name, addr in _ioctl_ipv4_addrs().items()}


def _ioctl_ipv4_addrs() -> dict[str, str]:
    """Fallback without iproute2: SIOCGIFADDR per interface (IPv4 only)."""
    import struct

    out = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
                out[name] = socket.inet_ntoa(raw[20:24])
            except OSError:
                continue
    return out


def route_source(addr: str) -> str | None:
    """The source address this node uses to reach `addr` (None: no route)."""
    routes = _ip_json("route", "get", addr)
    if routes:
        return routes[0].get("prefsrc") or (addr if routes[0].get("type") == "local" else None)
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((addr, 9))  # UDP connect only picks a route and a source address; nothing is sent
            return s.getsockname()[0]
    except OSError:
        return None


def interface_of(addr: str, ifaces: dict[str, list[str]]) -> str | None:
    return next((name for name, addrs in ifaces.items() if addr in addrs), None)


def node_network(endpoint_host: str) -> NodeNet | None:
    """This node's facts for a rendezvous at `endpoint_host`; None when no interface here reaches it.

    The node whose interface carries the endpoint address hosts the store, whatever its name resolves to;
    every other node reaches it from the source address of its route to the endpoint."""
    endpoint_addrs = resolve(endpoint_host)
    ifaces = interfaces()
    mine = {a for addrs in ifaces.values() for a in addrs}
    own = next((a for a in endpoint_addrs if a in mine), None)
    if own is not None:
        local = own
    else:
        local = next((src for src in map(route_source, endpoint_addrs) if src), None)
        if local is None:
            return None
    hostname = socket.gethostname()
    return NodeNet(endpoint_host=endpoint_host, endpoint_addrs=endpoint_addrs, is_host=own is not None,
                   local_addr=local, ifname=interface_of(local, ifaces), hostname=hostname,
                   hostname_addrs=resolve(hostname))


def first_outside_address() -> tuple[str, str] | None:
    """(interface, address) of this node's first non-loopback address: the suggestion in a fix."""
    for name, addrs in interfaces().items():
        for a in addrs:
            if not is_loopback(a) and not a.startswith("fe80:"):
                return name, a
    return None


def this_node(plan) -> NodeNet | None:
    """This node's facts for the plan's c10d rendezvous; None where torchrun's own guesses are right
    (no rendezvous, or a loopback endpoint: every agent on this machine)."""
    return _outside_node(plan.rdzv_endpoint.rpartition(":")[0]) if plan.mode == "c10d" else None


def slurm_node(head: str, node_id: int) -> tuple[NodeNet | None, NodeRole]:
    """This node's facts and part in a SLURM job's rendezvous on its first host `head`. Where `head` is
    loopback (every node of the job on one machine, each carrying that address) or unreachable, SLURM's
    node order decides who hosts the store, and torchrun's own address guess stands."""
    net = _outside_node(head)
    return net, net.role() if net else NodeRole(is_host=node_id == 0)


def _outside_node(host: str) -> NodeNet | None:
    addrs = resolve(host)
    if not addrs or only_loopback(addrs):
        return None
    return node_network(host)


def write_node_record(run_dir: str, record: dict, node: NodeNet | None, env: dict, write) -> None:
    """launch.json with this node's part under "nodes" (one entry per node address). Every node writes
    the same shared file, so the read-merge-write is under a lock."""
    entry = {"hostname": socket.gethostname(), "env": env}
    if node is not None:
        entry |= {"local_addr": node.local_addr, "ifname": node.ifname, "is_host": node.is_host,
                  "hostname_addrs": list(node.hostname_addrs)}
    os.makedirs(run_dir, exist_ok=True)
    lock = os.open(run_dir, os.O_RDONLY)  # the run dir itself is the lock: no extra file in it
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(os.path.join(run_dir, "launch.json")) as fh:
                nodes = json.load(fh).get("nodes", {})
        except (OSError, ValueError, AttributeError):
            nodes = {}
        nodes[entry.get("local_addr") or entry["hostname"]] = entry
        write(run_dir, {**record, "node": entry, "nodes": nodes})
    finally:
        os.close(lock)
