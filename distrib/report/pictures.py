"""The pictures of a run, written once each: to TensorBoard during training (global rank 0), or to a folder
by `distrain eval --report DIR` (per-class CSV, confused pairs CSV, PNGs).

TensorBoard tags:
    pictures/first_batch           the first training batch exactly as the model sees it (after augmentation
                                   and mixup/CutMix), denormalised
    pictures/confusion_matrix      validation confusion at the best epoch (rows true, columns predicted;
                                   up to 50 classes), step = the best epoch (0-based)
    pictures/confidently_wrong     the most confidently wrong validation images: "true -> predicted p"
    text: pictures/per_class       per-class accuracy and the 10 most confused class pairs (any class count)
"""

from __future__ import annotations

import csv
import os

import torch

from distrib.report.confusion import ConfusionResult
from distrib.report.draw import MAX_IMAGE_CLASSES, batch_grid, confusion_image, labelled_grid

FIRST_BATCH, CONFUSION, WRONG, PER_CLASS = ("pictures/first_batch", "pictures/confusion_matrix",
                                            "pictures/confidently_wrong", "pictures/per_class")


def wrong_grid(result: ConfusionResult, classes: list[str]) -> torch.Tensor | None:
    if not result.mistakes:
        return None
    pictures = torch.stack([m.picture for m in result.mistakes])
    captions = [f"{classes[m.true]} -> {classes[m.predicted]} {m.confidence:.2f}" for m in result.mistakes]
    return labelled_grid(pictures, captions)


def markdown(result: ConfusionResult, classes: list[str], title: str) -> str:
    """Per-class accuracy and the most confused pairs, as a Markdown table TensorBoard's text tab renders."""
    lines = [f"**{title}**", "", "| class | images | correct | acc1 % | most taken for | times |",
             "|---|---:|---:|---:|---|---:|"]
    lines += [f"| {r['class']} | {r['images']} | {r['correct']} | {r['acc1']:.2f} | {r['most_taken_for']} | "
              f"{r['times']} |" for r in result.per_class(classes)]
    pairs = result.confused_pairs(classes)
    lines += ["", "**most confused pairs** (true -> predicted)", "", "| true | predicted | images |",
              "|---|---|---:|"]
    lines += [f"| {t} | {p} | {k} |" for t, p, k in pairs] or ["| (none) | | |"]
    return "\n".join(lines)


def write_first_batch(tb, images: torch.Tensor, step: int) -> None:
    tb.add_image(FIRST_BATCH, batch_grid(images), step)
    tb.flush()


def write_best(tb, result: ConfusionResult, classes: list[str], epoch: int) -> None:
    """The validation pictures of the best epoch so far (epoch: 0-based, as metrics.jsonl)."""
    if len(classes) <= MAX_IMAGE_CLASSES:
        tb.add_image(CONFUSION, confusion_image(result.counts), epoch)
    wrong = wrong_grid(result, classes)
    if wrong is not None:
        tb.add_image(WRONG, wrong, epoch)
    tb.add_text(PER_CLASS, markdown(result, classes, f"validation at the best epoch, epoch {epoch + 1}"), epoch)
    tb.flush()


def write_folder(out_dir: str, result: ConfusionResult, classes: list[str]) -> list[str]:
    """`distrain eval --report DIR`: per_class.csv, confused_pairs.csv, confusion_counts.csv, and the PNGs."""
    from torchvision.io import write_png

    os.makedirs(out_dir, exist_ok=True)
    written = []

    def table(name: str, header: list[str], rows) -> None:
        path = os.path.join(out_dir, name)
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            w.writerows(rows)
        written.append(path)

    per_class = result.per_class(classes)
    table("per_class.csv", list(per_class[0]) if per_class else ["class"],
          [[f"{v:.4f}" if isinstance(v, float) else v for v in r.values()] for r in per_class])
    table("confused_pairs.csv", ["true", "predicted", "images"], result.confused_pairs(classes, top=10))
    table("confusion_counts.csv", ["true \\ predicted", *classes],
          [[name, *map(int, result.counts[i].tolist())] for i, name in enumerate(classes)])
    pictures = {"confidently_wrong.png": wrong_grid(result, classes)}
    if len(classes) <= MAX_IMAGE_CLASSES:
        pictures["confusion_matrix.png"] = confusion_image(result.counts)
    for name, picture in pictures.items():
        if picture is not None:
            write_png(picture, os.path.join(out_dir, name))
            written.append(os.path.join(out_dir, name))
    return written
