"""Runs side by side in TensorBoard's HPARAMS tab, live.

One experiment record (which hyper-parameters and metrics are the table's columns) at the root of the runs
folder, the same for every run of this distrain; each run writes its session start (its values) into its own
tb/ folder when it starts, so a running run is a row whose metrics move with its scalars, and no run loses
columns (torch's `add_hparams` writes a separate experiment per call instead: pytorch#39250).
The metrics are scalar tags of the run itself: val/acc1 and val/acc5 (their last value: the final ones),
best/acc1 and best/acc5 (at the epoch best.pt was chosen by), run/wall_seconds.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time

from distrib.config import RunConfig
from distrib.config.fields import TRAINING

METRICS = [("best/acc1", "best acc1"), ("best/acc5", "best acc5"), ("val/acc1", "final acc1"),
           ("val/acc5", "final acc5"), ("val/loss", "final val loss"), ("train/loss", "final train loss"),
           ("train/images_per_sec", "img/s"), ("run/wall_seconds", "wall time (s)")]
EXTRA = {"world_size": int}  # hyper-parameters that are not options


def columns() -> dict[str, type]:
    """The training options (and the world size) with a scalar type: the table's hyper-parameter columns."""
    out = {}
    for name, f in RunConfig.__dataclass_fields__.items():
        if f.metadata.get("group") != TRAINING:
            continue
        kind = f.type if isinstance(f.type, type) else str(f.type)
        base = {"int": int, "float": float, "str": str, "bool": bool}.get(str(kind).split(" |")[0].strip("'"))
        if base is not None:
            out[name] = base
    return {**out, **EXTRA}


def _hp():
    """TensorBoard's hparams API: 0.3 s of imports that only rank 0, which writes these records, pays."""
    from tensorboard.plugins.hparams import summary_v2

    return summary_v2


def _domain(kind: type):
    return _hp().Discrete([False, True]) if kind is bool else None  # numbers and names: any value


def experiment_pb():
    hp = _hp()
    hparams = [hp.HParam(name, _domain(kind)) for name, kind in columns().items()]
    metrics = [hp.Metric(tag, display_name=title) for tag, title in METRICS]
    return hp.hparams_config_pb(hparams=hparams, metrics=metrics, time_created_secs=0)


RECORD_SUFFIX = ".distrain-experiment"


def write_experiment(runs_dir: str) -> None:
    """The runs folder's one experiment record, written by the first run (and again only when a new distrain
    changes the columns: the older record, ours by its suffix, is removed)."""
    from torch.utils.tensorboard.writer import FileWriter

    pb = experiment_pb()
    digest = hashlib.sha256(pb.SerializeToString()).hexdigest()[:12]
    suffix = f"{RECORD_SUFFIX}-{digest}"
    ours = glob.glob(os.path.join(runs_dir, f"events.out.tfevents.*{RECORD_SUFFIX}-*"))
    if any(path.endswith(suffix) for path in ours):
        return
    for path in ours:
        with _quiet():
            os.remove(path)
    writer = FileWriter(runs_dir, filename_suffix=suffix)
    writer.add_summary(pb)
    writer.close()


def session_values(config: dict, world_size: int) -> dict:
    """This run's values of the columns (a None option is left empty)."""
    values = {name: config.get(name) for name in columns()}
    values["world_size"] = world_size
    return {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str))}


def write_session_start(tb, config: dict, world_size: int, trial: str) -> None:
    tb.file_writer.add_summary(_hp().hparams_pb(session_values(config, world_size), trial_id=trial,
                                             start_time_secs=int(time.time())))
    tb.flush()


class Standing:
    """Best acc1/acc5 (by the key best.pt is chosen by) and wall time so far, across resumes: a resumed run
    starts from its metrics.jsonl rows."""

    def __init__(self, metrics_path: str, resume_epoch: int):
        self.best: tuple[float, float] | None = None
        self.before = 0.0  # seconds of the epochs before this attempt (their training time)
        self.started = time.monotonic()
        if os.path.exists(metrics_path):
            with open(metrics_path) as fh:
                for row in (json.loads(line) for line in fh if line.strip()):
                    if row["epoch"] < resume_epoch:
                        self.add(row)
                        self.before += row.get("epoch_seconds", 0.0)

    def add(self, row: dict) -> None:
        key = "val_ema_acc1" if "val_ema_acc1" in row else "val_acc1"
        five = key.replace("acc1", "acc5")
        if self.best is None or row[key] > self.best[0]:
            self.best = (row[key], row[five])

    def scalars(self, row: dict) -> dict:
        self.add(row)
        return {"best/acc1": self.best[0], "best/acc5": self.best[1],
                "run/wall_seconds": self.before + time.monotonic() - self.started}


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)
