"""Everything a run writes for people: metrics.jsonl, TensorBoard and progress, from global rank 0 only.

Other ranks get a `NullWriter`, so the training loop never asks "am I rank 0?" before writing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

from distrib.files import write_atomic
from distrib.paths import RunPaths
from distrib.words import duration, epoch_name, input_verdict

log = logging.getLogger("distrain")

EPOCH_SCALARS = {  # metrics.jsonl key -> TensorBoard tag
    "train_loss": "train/loss", "lr": "train/lr", "images_per_sec": "train/images_per_sec",
    "epoch_seconds": "train/epoch_seconds", "val_acc1": "val/acc1", "val_acc5": "val/acc5",
    "val_loss": "val/loss", "skipped_images": "data/skipped_images",
    "val_ema_acc1": "val_ema/acc1", "val_ema_acc5": "val_ema/acc5", "val_ema_loss": "val_ema/loss",  # --model-ema
    "data_wait_share": "train/data_wait_share",
}

STEP_SCALARS = {  # distrib/runtime/monitor.py's figures -> TensorBoard tag, on the global-step axis
    "loss": "step/loss", "loss_max": "step/loss_max_rank", "lr": "step/lr", "images_per_sec": "step/images_per_sec",
    "step_time": "step/step_time", "data_wait_share": "step/data_wait_share", "grad_norm": "step/grad_norm",
    "loss_scale": "step/loss_scale", "slowest_ratio": "step/slowest_over_median",
    "max_allocated_gib": "memory/max_allocated_gib", "max_reserved_gib": "memory/max_reserved_gib",
    "alloc_retries": "memory/alloc_retries", "ooms": "memory/ooms", "rss_gib_max": "memory/rss_gib_max",
    "world_size": "step/world_size",  # an elastic run's throughput and loss change with it: seen on the same axis
}


PROGRESS_SECONDS = 30  # a progress line at least this often, however slow the steps


class NullWriter:
    def start(self, config: dict, summary: str, resume_epoch: int = 0, gpu: bool = True) -> None: ...
    def epoch_started(self) -> None: ...
    def step(self, epoch: int, batch: int, batches: int, loss, images: int) -> None: ...
    def figures(self, figures: dict) -> None: ...
    def progress(self, epoch: int, batch: int, batches: int, loss: float, images_per_sec: float) -> None: ...
    def epoch(self, row: dict) -> None: ...
    def close(self, final: dict | None = None) -> None: ...


class RunWriter(NullWriter):
    def __init__(self, run_dir: str, tty: bool, log_interval: int = 20, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.paths, self.log_interval = RunPaths(run_dir), log_interval
        self._last_line, self._interval_images = time.monotonic(), 0
        self._first_step_end, self._first_batch, self._estimated = None, 0, False
        # purge_step: a resumed run drops the points an earlier attempt wrote past its checkpoint (TensorBoard
        # hides events at steps >= purge_step written before it), so its step curves have no duplicate step
        self.tb = SummaryWriter(self.paths.tb, purge_step=purge_step)
        self.tty = tty
        self.workers, self.gpu = None, True  # named by the input-bound verdict; set by start()
        self._t0 = time.monotonic()

    def start(self, config: dict, summary: str, resume_epoch: int = 0, gpu: bool = True) -> None:
        self._forget_rows_from(resume_epoch)
        self.workers, self.gpu = config.get("workers"), gpu
        toml_lines = "\n".join(f"    {k} = {v!r}" for k, v in sorted(config.items()))
        self.tb.add_text("config", toml_lines)
        log.info(summary)

    def _forget_rows_from(self, epoch: int) -> None:
        """Rows past the checkpoint being resumed (a crash between row and checkpoint) are trained again."""
        path = self.paths.metrics
        if not os.path.exists(path):
            return
        with open(path) as fh:
            lines = [line for line in fh if line.strip()]
        keep = [line for line in lines if json.loads(line)["epoch"] < epoch]
        if len(keep) != len(lines):
            with open(path, "w") as fh:
                fh.writelines(keep)

    def step(self, epoch: int, batch: int, batches: int, loss, images: int) -> None:
        """Called after every training step with the global images of the step. Prints a progress line
        every --log-interval steps, at the last step, or when PROGRESS_SECONDS have passed without one;
        `loss` may be a device tensor: it is read (a host sync) only when a line is printed."""
        now = time.monotonic()
        self._interval_images += images
        self._estimate_epoch(batch, batches, now)
        due = self.log_interval and batch % self.log_interval == 0
        if (not due and batch != batches and now - self._last_line < PROGRESS_SECONDS
                and not (self.tty and now - self._last_line >= 1)):
            return
        rate = self._interval_images / max(now - self._last_line, 1e-9)
        self._interval_images, self._last_line = 0, now
        self.progress(epoch, batch, batches, float(loss), rate)

    TIMED_STEPS = 5  # steps timed after the first (which pays for warm-up) before estimating an epoch

    def _estimate_epoch(self, batch: int, batches: int, now: float) -> None:
        """Once per run: how long an epoch will take, from the first steps after the warm-up step."""
        if self._estimated:
            return
        if self._first_step_end is None:
            self._first_step_end, self._first_batch = now, batch
            return
        timed = batch - self._first_batch
        if timed >= min(self.TIMED_STEPS, batches - self._first_batch) and timed > 0:
            per_step = (now - self._first_step_end) / timed
            self._estimated = True
            log.info("timing: %.2f s per step; one epoch of %d steps takes about %s (plus validation)",
                     per_step, batches, duration(per_step * batches))

    def progress(self, epoch: int, batch: int, batches: int, loss: float, images_per_sec: float) -> None:
        elapsed = time.monotonic() - self._t0
        eta = elapsed / max(batch, 1) * (batches - batch)
        if self.tty:
            done = int(24 * batch / max(batches, 1))
            bar = "#" * done + "." * (24 - done)
            sys.stdout.write(f"\repoch {epoch + 1} [{bar}] {batch}/{batches} loss {loss:.4f} "
                             f"{images_per_sec:,.0f} img/s eta {eta:4.0f}s ")
            sys.stdout.flush()
        else:
            log.info("epoch %d step %d/%d loss %.4f %.1f img/s eta %.0fs", epoch + 1, batch, batches, loss,
                     images_per_sec, eta)

    def figures(self, figures: dict) -> None:
        """Every --log-interval steps: step-level scalars, RUN_DIR/live.json, and a straggler's line."""
        figures = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in figures.items()}
        if figures["device"] != "cuda":
            figures["rss_gib_max"] = max(figures["rss_gib"])  # resident memory, the largest rank's
        for key, tag in STEP_SCALARS.items():
            if figures.get(key) is not None:
                self.tb.add_scalar(tag, figures[key], figures["step"])
        write_atomic(self.paths.live, figures, as_json=True)
        if "straggler_line" in figures:
            log.warning("%s", figures["straggler_line"])

    def epoch_started(self) -> None:
        self._t0 = self._last_line = time.monotonic()
        self._interval_images = 0

    def epoch(self, row: dict) -> None:
        if self.tty:
            sys.stdout.write("\n")
        with open(self.paths.metrics, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        for key, tag in EPOCH_SCALARS.items():
            if key in row:
                self.tb.add_scalar(tag, row[key], row["epoch"])
        self.tb.flush()
        log.info("epoch %d: train loss %.4f  val loss %.4f  acc1 %.2f%%  acc5 %.2f%%  (%d val images, "
                 "%.0f img/s, %.1fs)", row["epoch"] + 1, row["train_loss"], row["val_loss"], row["val_acc1"],
                 row["val_acc5"], row["val_samples"], row["images_per_sec"], row["epoch_seconds"])
        if "data_wait_share" in row:
            log.info("%s: %s", epoch_name(row["epoch"]), input_verdict(
                row["data_wait_share"], self.workers, row.get("node_cores"), row.get("node_procs"), self.gpu))
        if "val_ema_acc1" in row:
            log.info("epoch %d: EMA val loss %.4f  acc1 %.2f%%  acc5 %.2f%%", row["epoch"] + 1, row["val_ema_loss"],
                     row["val_ema_acc1"], row["val_ema_acc5"])

    def close(self, final: dict | None = None) -> None:
        self.tb.close()  # the HPARAMS record is distrib/report/hparams.py's (one experiment per runs folder)


def writer_for(rank: int, run_dir: str, log_interval: int = 20, purge_step: int | None = None) -> NullWriter:
    return (RunWriter(run_dir, tty=sys.stdout.isatty(), log_interval=log_interval, purge_step=purge_step)
            if rank == 0 else NullWriter())


def setup_logging(rank: int, run_dir: str) -> None:
    """Rank 0 talks on stdout; every rank keeps its own file under RUN_DIR/logs/."""
    logger = logging.getLogger("distrain")
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank {rank}] %(message)s"))
    logger.addHandler(console)
    paths = RunPaths(run_dir)
    os.makedirs(paths.logs, exist_ok=True)
    to_file = logging.FileHandler(paths.rank_log(rank))
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(to_file)
