"""train.py's one handle on the run's pictures, HPARAMS record and profiler (a few hook lines in the loop).

Every rank holds one: the confusion matrix and the mistakes are collectives, and any rank may profile;
only global rank 0 (the one with a TensorBoard writer) writes TensorBoard.
"""

from __future__ import annotations

import os

import torch

from distrib.paths import RunPaths
from distrib.report import hparams, pictures
from distrib.report.confusion import Confusion
from distrib.report.profile import Profiler


class Watch:
    def __init__(self, tb, classes: list[str], device: torch.device, profiler: Profiler | None,
                 standing: hparams.Standing | None, first_step: int):
        self.tb, self.classes, self.device = tb, classes, device
        self.profiler, self.standing = profiler, standing
        self.first_step, self._batch_pending = first_step, tb is not None

    @classmethod
    def idle(cls) -> Watch:
        """Writes nothing, profiles nothing (a loop built without a run, e.g. in a test)."""
        return cls(None, [], torch.device("cpu"), None, None, 0)

    @classmethod
    def start(cls, cfg, env, writer, classes: list[str], device: torch.device, progress) -> Watch:
        tb = getattr(writer, "tb", None)  # the RunWriter's SummaryWriter on global rank 0; None elsewhere
        standing = None
        if tb is not None:
            run_dir = os.path.abspath(cfg.run_dir)
            hparams.write_experiment(os.path.dirname(run_dir))
            hparams.write_session_start(tb, cfg.to_toml_dict(), env.world_size, os.path.basename(run_dir))
            standing = hparams.Standing(RunPaths(cfg.run_dir).metrics, progress.epoch)
        return cls(tb, classes, device, Profiler.from_config(cfg, env.rank, device), standing, progress.step)

    def batch(self, images: torch.Tensor) -> None:
        """The first training batch of this attempt, as the model sees it (once; then a flag test a step)."""
        if self._batch_pending and images.numel():
            self._batch_pending = False
            pictures.write_first_batch(self.tb, images, self.first_step)

    def step(self) -> None:
        if self.profiler is not None:
            self.profiler.step()

    def confusion(self) -> Confusion:
        return Confusion(len(self.classes))

    def epoch(self, row: dict, is_best: bool, confusion: Confusion) -> None:
        """After an epoch's row: the live HPARAMS metrics; at a new best, the validation pictures.
        Every rank calls it (is_best is the same everywhere: the accuracy is reduced exactly)."""
        result = confusion.finish(self.device) if is_best else None
        if self.tb is None:
            return
        for tag, value in self.standing.scalars(row).items():
            self.tb.add_scalar(tag, value, row["epoch"])
        if result is not None:
            pictures.write_best(self.tb, result, self.classes, row["epoch"])
        self.tb.flush()

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.close()
