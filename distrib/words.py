"""How distrain says things to people, said once: an option's flag, a count and a duration. Torch-free (the
launcher, slurm/ and the ranks share it)."""

from __future__ import annotations


def flag(name: str) -> str:
    """A RunConfig field's command-line spelling without the dashes in front: batch_size -> batch-size."""
    return name.replace("_", "-")


def counted(n: int, noun: str) -> str:
    """1 shard, 4 shards, 2 processes: a count with its noun (regular English plurals)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith(('s', 'x', 'sh', 'ch')) else 's'}"


def duration(seconds: float) -> str:
    """40 s, 3 min 05 s, 2 h 03 min: seconds while they matter, then minutes, then hours."""
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    h, rem = divmod(seconds, 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


# Epochs, for people, count from 1: "epoch 1" is the first one trained, "4 of 4 epochs done" a finished run,
# "best acc1 at epoch 4" its last. (metrics.jsonl's "epoch" and TensorBoard's epoch axis stay 0-based
# indexes, for programs.) A position is (epoch index, step inside it), as position.json and checkpoints hold.
def epoch_name(index: int) -> str:
    """The 0-based epoch index as people count it: 0 -> 'epoch 1'."""
    return f"epoch {index + 1}"


def position_words(epoch: int, step: int, steps: int | None) -> str:
    """Where a run stands: 'the end of epoch 3' (step 0 of the next index) or 'epoch 4, step 18 of 22'
    ('epoch 4, step 18' when the epoch's length is not known here)."""
    if step:
        return f"{epoch_name(epoch)}, step {step}" + (f" of {steps}" if steps is not None else "")
    return f"the end of {epoch_name(epoch - 1)}" if epoch else "the start"


INPUT_BOUND_SHARE = 0.20  # a data-wait share of step time above this is worth acting on


def input_verdict(share: float, workers: int | None = None, cores: int | None = None, procs: int | None = None,
                  gpu: bool = True) -> str:
    """What a data-wait share of step time means, and what to do about it on this node when it is large
    (--decode device only where training is on a GPU)."""
    said = f"the model waited on data {100 * share:.0f}% of step time"
    if share <= INPUT_BOUND_SHARE:
        return f"{said}: not input-bound"
    more, full = "more --workers; ", ""
    if workers is not None and cores and procs:
        spare = max(cores // procs - 1, 0)  # a core per training process, the rest for its loader workers
        processes = counted(procs, "training process")
        if spare > workers:
            more = (f"more --workers (now {workers} per process; {cores} cores here for {processes}: up to {spare} "
                    "each); ")
        elif workers:
            more, full = "", (f" More --workers would not help: {workers} per process already use all {cores} "
                              f"cores here for {processes}.")
        else:  # --workers 0: the training processes load their own data
            more, full = "", (f" Loader workers would not help: {cores} cores here for {processes} leave none "
                              "to spare.")
    decode = "--decode device (JPEGs decoded on the GPU, in batches); or " if gpu else ""
    return (f"{said}: input-bound.{full} Try {more}{decode}`distrain pack DATA OUT` (shards read faster than many "
            "small files)")
