"""How distrain says things to people, said once: an option's flag and a duration. Torch-free (the
launcher, slurm/ and the ranks share it)."""

from __future__ import annotations


def flag(name: str) -> str:
    """A RunConfig field's command-line spelling without the dashes in front: batch_size -> batch-size."""
    return name.replace("_", "-")


def duration(seconds: float) -> str:
    """40 s, 3 min 05 s, 2 h 03 min: seconds while they matter, then minutes, then hours."""
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    h, rem = divmod(seconds, 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"
