"""Pre-flight checks: what would make a run fail, found before anything starts.

`cheap_checks` runs before every launch (milliseconds, no torch); `report` is `distrain check`: every check,
the expensive ones too (a header scan of every image, the backends), as a table with the fix for each fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass

from distrib.config import ConfigError, RunConfig
from distrib.data import formats
from distrib.data.layout import count_images, split_dir
from distrib.paths import RunPaths
from distrib.runtime.env import cpu_cores
from distrib.words import counted, position_words
from launch import console, network, run_dir, topology

MIN_FREE_BYTES = 2 * 1024**3  # room for last.pt + best.pt of a large model, with headroom


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # a failed warning does not stop a launch

    @property
    def message(self) -> str:
        return f"{self.detail}; {self.fix}" if self.fix else self.detail


def check_data(cfg: RunConfig, build: bool = True, name_hidden: bool = False) -> Check:
    """The data's layout; build=True (not a dry run) also builds or loads the folder's index, so the ranks
    find it ready and list nothing. name_hidden (`distrain check`): list the splits for hidden folders."""
    fmt = formats.format_of(cfg)
    try:
        classes = formats.check(cfg, build)
    except ConfigError as e:
        wrong, _, fix = str(e).partition("; ")  # a ConfigError says what is wrong; how to fix it
        return Check("data", False, wrong, fix)
    if fmt == "synthetic":
        return Check("data", True, "synthetic images")
    detail = f"{cfg.data} ({fmt}): {len(classes)} classes"
    if fmt == "folder" and name_hidden:
        from distrib.data.layout import hidden_dirs, split_dir, splits

        hidden = [os.path.relpath(os.path.join(split_dir(cfg.data, split), name), cfg.data)
                  for split in splits(cfg.data, cfg.val_split) for name in hidden_dirs(split_dir(cfg.data, split))]
        if hidden:
            detail += f"; ignored hidden folders (not classes): {', '.join(hidden)}"
    return Check("data", True, detail)


def check_batch_fits(cfg: RunConfig, plan: topology.Plan, here: bool = True) -> Check | None:
    """Every process needs one whole batch of training images per epoch: the index's count, or (dry run,
    no index yet) a count that stops once there are enough, a few directory reads on a large tree."""
    if cfg.synthetic or not cfg.data or formats.format_of(cfg) != "folder":
        return None  # shards: the rank checks it against the index; synthetic data always fills a batch
    need = cfg.batch_size * plan.min_nodes * plan.procs_per_node
    have = _indexed_train_images(cfg) if here else None  # check_data built the index: no listing
    if have is None:
        have = count_images(split_dir(cfg.data, "train"), stop_at=need)
    if have >= need:
        return None
    most = max(1, have // (plan.min_nodes * plan.procs_per_node))
    return Check("batch", False, f"{have} training images cannot fill one batch of {cfg.batch_size} on each of "
                 f"{plan.min_nodes * plan.procs_per_node} process(es)",
                 f"use --batch-size {most} or less, or fewer processes")


def _indexed_train_images(cfg: RunConfig) -> int | None:
    from distrib.data import index  # numpy: only where the index exists

    built = index.load(cfg.data, cfg.val_split)
    return built.meta["splits"]["train"]["count"] if built else None


def check_gpus(cfg: RunConfig, plan: topology.Plan, gpus_here: int) -> Check:
    if cfg.gpus is None or cfg.gpus <= gpus_here or cfg.slurm:
        return Check("gpus", True, f"{plan.procs_per_node} {plan.device} process(es) per node; "
                     f"{gpus_here} GPU(s) visible here")
    return Check("gpus", False, f"--gpus {cfg.gpus} asked for, but {gpus_here} visible here",
                 f"use --gpus {gpus_here}" + (" (or --gpus 0 for CPU processes)" if gpus_here else
                                              " for CPU processes, or run where the GPUs are"))


def check_resume(cfg: RunConfig) -> Check | None:
    """A checkpoint to resume from must fit the model and data; only then is torch imported here."""
    path = RunPaths(cfg.run_dir).last if cfg.resume == "auto" else cfg.resume
    if cfg.resume == "never" or not os.path.isfile(path) or cfg.overwrite and cfg.resume == "auto":
        return None
    from distrib import checkpoint

    try:
        ckpt = checkpoint.load(path)
        classes = formats.check(cfg)
        checkpoint.check_fits(ckpt, path, cfg.arch, classes, fix="or another --run-dir, or --overwrite to "
                              "start afresh there" if cfg.resume == "auto" else "or --resume never to start afresh")
    except ConfigError as e:
        return Check("resume", False, str(e))
    return Check("resume", True, f"resumes {path} at {position_words(ckpt['epoch'], 0, None)}")


def check_start_weights(cfg: RunConfig, here: bool) -> Check | None:
    """--weights must fit --arch (refused before launch, naming an arch that fits); --pretrained weights must
    be in the torch hub cache the ranks read, fetched now if they are not. torch only with these options."""
    if cfg.weights:
        from distrib import weights

        try:
            fit = weights.check_fit(weights.read_state_dict(cfg.weights), cfg.weights, cfg.arch)
        except ConfigError as e:
            return Check("weights", False, str(e))
        return Check("weights", True, f"{cfg.weights} fits --arch {cfg.arch} (classifier {fit.head}: "
                     f"{fit.file_classes} classes; replaced if the data has another count)")
    if cfg.pretrained:
        from launch import pretrained

        try:
            return Check("pretrained", True, pretrained.ensure_cached(cfg.arch, download=here))
        except ConfigError as e:
            return Check("pretrained", False, str(e), warning=not here)  # a dry run may be for another machine
    return None


def check_not_in_use(cfg: RunConfig, plan: topology.Plan | None) -> Check | None:
    """Two launches training one run dir overwrite each other's checkpoints and metrics: a single-node launch
    is refused while this machine's launcher of that run dir is alive. (The nodes of a multi-node run, and a
    SLURM job's steps and requeued attempts, launch one run dir together: not checked there.)"""
    if plan is None or plan.max_nodes != 1 or os.environ.get("SLURM_JOB_ID"):
        return None
    record = run_dir.outcome(RunPaths(cfg.run_dir)) or {}
    if record.get("state") != "running" or record.get("pid") == os.getpid() or not run_dir.launcher_alive(record):
        return None
    return Check("run dir", False, f"run dir {cfg.run_dir} is being trained right now by another launch (pid "
                 f"{record['pid']} on this machine); stop it first (Ctrl-C there, or touch {cfg.run_dir}/STOP) and "
                 "this command resumes it, or pass another --run-dir")


def check_run_dir(cfg: RunConfig) -> Check:
    """Write a scratch file where the run dir will be (or its nearest existing parent): creates nothing."""
    folder = os.path.abspath(cfg.run_dir)
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".distrain-write-test"):
            pass
    except OSError as e:
        return Check("run dir", False, f"run dir {cfg.run_dir} is not writable ({e.strerror})",
                     "pass --run-dir on a writable filesystem")
    return Check("run dir", True, f"{cfg.run_dir} is writable")


def check_disk(cfg: RunConfig) -> Check:
    folder = cfg.run_dir
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    free = shutil.disk_usage(folder or ".").free
    ok = free >= MIN_FREE_BYTES
    return Check("disk", ok, f"{free / 1024**3:.1f} GiB free for checkpoints under {folder or '.'}",
                 "" if ok else "free space or use --run-dir elsewhere (checkpoints need ~2 GiB)", warning=True)


def check_rendezvous(cfg: RunConfig, plan: topology.Plan) -> Check | None:
    """Can the other nodes meet this one at the endpoint, and does this node know its own part in it?"""
    if plan.mode != "c10d":
        return None
    host, _, port = plan.rdzv_endpoint.rpartition(":")
    addrs = network.resolve(host)
    if not addrs:
        return Check("rendezvous", False, f"--rdzv-endpoint host {host!r} does not resolve here",
                     "use the first node's IP address or a name every node resolves")
    if network.only_loopback(addrs):
        return _loopback_endpoint(host, addrs, port, plan)
    node = network.node_network(host)
    if node is None:
        return Check("rendezvous", False, f"no interface here routes to the rendezvous host {host} "
                     f"({', '.join(addrs)})", "check the address, or this node's network (ip route get ADDR)")
    if not node.is_host:
        return Check("rendezvous", True, node.describe())
    try:
        with socket.socket(socket.AF_INET6 if ":" in node.local_addr else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", int(port)))
    except OSError:
        return Check("rendezvous", False, f"port {port} on this rendezvous host is in use",
                     "pick another --rdzv-endpoint port", warning=True)
    return Check("rendezvous", True, f"{node.describe()}; port {port} is free")


def _loopback_endpoint(host: str, addrs: tuple[str, ...], port: str, plan: topology.Plan) -> Check:
    """A loopback endpoint reaches no other machine. Written as an address (127.0.0.1) it is a choice: every
    node on this machine. A name that resolves to loopback (localhost, or Debian's 127.0.1.1 for the
    machine's own name) is the classic trap: each node would wait for a store on itself."""
    if plan.max_nodes == 1:
        return Check("rendezvous", True, f"{host} is this machine (loopback)")
    outside = network.first_outside_address()
    fix = (f"use this node's address instead: --rdzv-endpoint {outside[1]}:{port} ({outside[0]})" if outside
           else "use an address of this node that the other nodes reach")
    if network.is_ip_literal(host):
        return Check("rendezvous", False, f"--rdzv-endpoint {host} is loopback: only nodes on this machine can "
                     f"join the {plan.nnodes} nodes expected", fix, warning=True)
    return Check("rendezvous", False, f"--rdzv-endpoint host {host!r} resolves to {', '.join(addrs)} here, a "
                 f"loopback address, while {plan.nnodes} nodes are expected: no other node can reach it",
                 f"{fix}, or map {host} to that address in /etc/hosts")


def check_hostname(plan: topology.Plan | None) -> Check | None:
    """This node's own name resolving to loopback (127.0.1.1 on Debian) makes torchrun and gloo advertise an
    address no other node can reach; distrain sidesteps it (--local-addr, GLOO_SOCKET_IFNAME), other tools
    on the node will not."""
    if plan is None or plan.mode != "c10d" or plan.max_nodes == 1:
        return None
    name = socket.gethostname()
    addrs = network.resolve(name)
    if addrs and not network.only_loopback(addrs):
        return Check("hostname", True, f"{name} resolves to {', '.join(addrs)}")
    detail = (f"this node's name {name} resolves to {', '.join(addrs) or 'nothing'}"
              + (" (loopback)" if addrs else "") + "; distrain passes torchrun --local-addr and sets "
              "GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME from the route to the rendezvous host instead")
    return Check("hostname", False, detail, f"for other tools, map {name} to this node's address in /etc/hosts",
                 warning=True)


def cheap_checks(cfg: RunConfig, plan: topology.Plan | None, here: bool = True) -> list[Check]:
    """Failed checks only. `here=False` (dry run, another machine): skip what writes to this machine."""
    checks = [check_data(cfg, build=here), check_start_weights(cfg, here)]
    if here:
        checks += [check_run_dir(cfg), check_disk(cfg)]
        if checks[0].ok:
            checks.append(check_resume(cfg))
    if plan is not None:
        checks += [check_gpus(cfg, plan, topology.visible_gpus()), check_rendezvous(cfg, plan)]
        if checks[0].ok:
            checks.append(check_batch_fits(cfg, plan, here))
    return [c for c in checks if c is not None and not c.ok]


def full_checks(cfg: RunConfig, sample: int | None = None, out=None) -> list[Check]:
    checks = [check_data(cfg, name_hidden=True)]
    if checks[0].ok and not cfg.synthetic:
        checks.append(check_images(cfg, sample, out))
    checks.append(check_start_weights(cfg, here=False))  # as the launch reads them; no download from a check
    gpus_here = topology.visible_gpus()
    try:
        plan = topology.make_plan(cfg, gpus_here)
        checks.append(check_gpus(cfg, plan, gpus_here))
    except ConfigError as e:
        plan = None
        checks.append(Check("topology", False, str(e)))
    checks.append(check_backend(plan))
    if plan is not None:
        checks += [check_rendezvous(cfg, plan), check_hostname(plan)]
    checks += [check_run_dir(cfg), check_disk(cfg)]
    if checks[0].ok:
        checks.append(check_resume(cfg))
    return [c for c in checks if c is not None]


def check_images(cfg: RunConfig, sample: int | None = None, out=None) -> Check:
    from distrib.data import scan

    procs = cpu_cores()
    with console.progress(out, f"reading headers ({counted(procs, 'process')})") as tick:
        result = scan.scan(cfg, procs, sample, tick)
    what = f"{result.checked} {result.what} read" + (f" (a random {sample})" if sample else "")
    if not result.bad:
        return Check("images", True, f"{what}, none unreadable")
    shown = ", ".join(result.bad[:3]) + (" ..." if len(result.bad) > 3 else "")
    return Check("images", False, f"{len(result.bad)} problems in {what} ({shown})",
                 "training skips and counts unreadable images; remove or replace them (or pack again) for a "
                 "clean run", warning=True)


def check_backend(plan: topology.Plan | None) -> Check:
    import torch.distributed as dist  # the only check that needs torch

    want = "nccl" if plan is not None and plan.device == "cuda" else "gloo"
    ok = dist.is_available() and (dist.is_nccl_available() if want == "nccl" else dist.is_gloo_available())
    return Check("backend", ok, f"{want} {'available' if ok else 'not available in this torch build'}",
                 "" if ok else "install a torch build with it, or use --gpus 0 (gloo)")


def report(cfg: RunConfig, out, sample: int | None = None) -> int:
    from rich.table import Table

    try:
        cfg.validate()
    except ConfigError as e:
        out.print(f"[red]options:[/] {e}", soft_wrap=True)
        return 2
    table = Table(title="distrain check", show_lines=False)
    for col in ("check", "result", "detail", "fix"):
        table.add_column(col, overflow="fold")
    checks = full_checks(cfg, sample, out)
    for c in checks:
        mark = "[green]pass[/]" if c.ok else ("[yellow]warn[/]" if c.warning else "[red]FAIL[/]")
        table.add_row(c.name, mark, c.detail, c.fix)
    out.print(table)
    return 1 if any(not c.ok and not c.warning for c in checks) else 0
