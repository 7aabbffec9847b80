"""The confusion matrix of a validation pass, exact across ranks, and its most confidently wrong images.

`Confusion` is handed to `distrib.validation.evaluate` as its observer: it counts (true, predicted) pairs on
this rank's shard and keeps this rank's few most confident mistakes. `finish()` is a collective (every rank
calls it): the counts are summed in float64 with the same all_reduce as the accuracy (exact for any world
size), the mistakes are gathered and the global top kept, the same on every rank.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from distrib.report.draw import denormalise
from distrib.runtime.process_group import all_reduce_sum, is_dist


@dataclasses.dataclass
class Mistake:
    confidence: float        # the softmax probability of the wrong prediction
    true: int
    predicted: int
    picture: torch.Tensor    # CHW uint8, denormalised


@dataclasses.dataclass
class ConfusionResult:
    counts: torch.Tensor     # classes x classes, int64; rows true, columns predicted
    mistakes: list[Mistake]  # most confident first

    def per_class(self, classes: list[str]) -> list[dict]:
        """One row per class: images, correct, accuracy (percent), the class it is most often taken for."""
        rows = []
        for i, name in enumerate(classes):
            row = self.counts[i]
            total, correct = int(row.sum()), int(row[i])
            others = row.clone()
            others[i] = -1
            worst = int(others.argmax()) if len(classes) > 1 and int(others.max()) > 0 else None
            rows.append({"class": name, "images": total, "correct": correct,
                         "acc1": 100.0 * correct / total if total else 0.0,
                         "most_taken_for": classes[worst] if worst is not None else "",
                         "times": int(row[worst]) if worst is not None else 0})
        return rows

    def confused_pairs(self, classes: list[str], top: int = 10) -> list[tuple[str, str, int]]:
        """(true, predicted, images) for the most frequent mistakes, most first (ties in class order)."""
        off = self.counts.clone()
        off.fill_diagonal_(0)
        flat = off.flatten()
        order = sorted(range(flat.numel()), key=lambda k: (-int(flat[k]), k))
        n = len(classes)
        return [(classes[k // n], classes[k % n], int(flat[k])) for k in order[:top] if int(flat[k]) > 0]


class Confusion:
    """Observer of one validation pass (see the module's docstring)."""

    def __init__(self, num_classes: int, keep: int = 16):
        self.num_classes, self.keep = num_classes, keep
        self.counts: torch.Tensor | None = None
        self.mistakes: list[Mistake] = []

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> None:
        n = self.num_classes
        predicted = logits.argmax(dim=1)
        pairs = torch.bincount(labels * n + predicted, minlength=n * n).view(n, n)
        self.counts = pairs if self.counts is None else self.counts + pairs
        wrong = (predicted != labels).nonzero().flatten()
        if not len(wrong):
            return
        confidence = logits.float().softmax(dim=1).max(dim=1).values[wrong]
        floor = self.mistakes[-1].confidence if len(self.mistakes) >= self.keep else -1.0
        better = wrong[confidence > floor][:self.keep]
        if not len(better):
            return
        pictures = denormalise(images[better])
        conf = logits.float().softmax(dim=1).max(dim=1).values[better].tolist()
        for c, t, p, pic in zip(conf, labels[better].tolist(), predicted[better].tolist(), pictures):
            self.mistakes.append(Mistake(c, t, p, pic))
        self.mistakes = sorted(self.mistakes, key=_order)[:self.keep]

    def finish(self, device: torch.device) -> ConfusionResult:
        """Collective: the global counts (exact) and the global most confident mistakes, on every rank."""
        n = self.num_classes
        local = self.counts if self.counts is not None else torch.zeros(n, n, dtype=torch.int64, device=device)
        counts = all_reduce_sum(local.to(device=device, dtype=torch.float64)).round().to(torch.int64).cpu()
        mistakes = self.mistakes
        if is_dist():
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mistakes)
            mistakes = [m for part in gathered for m in part]
        return ConfusionResult(counts, sorted(mistakes, key=_order)[:self.keep])


def _order(m: Mistake):
    """Most confident first; ties broken by the classes, so the pick is the same for any world size."""
    return (-m.confidence, m.true, m.predicted)
