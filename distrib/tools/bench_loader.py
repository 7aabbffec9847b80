"""A loader rate a user can trust: warm up until it has settled, then time a window of seconds.

    batches = endless(loaders)                       # train batches, epoch after epoch
    with Ticker(say) as ticker:                      # a progress line at least every PROGRESS_EVERY_S
        figures = measure_window(batches, consume, workers, seconds, ticker)
    batches.close()                                  # shuts the persistent workers down

Why not "a few batches after one warm-up batch": workers start one after another, each then fills its
prefetch queue, and they deliver in rounds (DataLoader hands batch i to worker i % W and returns them in
order), so the first batches arrive in bursts at a rate that is neither the start-up's nor the steady
state's. A count of 6 or 14 batches gave 643 and 964 img/s on files where a whole-epoch measurement
gave 1,016. So: time whole rounds (every worker delivers one batch per round), warm up until every
worker has delivered and two consecutive parts of WINDOW_PARTS agree within SETTLE, then time a window
of `seconds` in parts; the figure is the median part's rate (the window's mean rate is kept beside
it), the parts' rates its spread.
Epoch ends fall inside the window as they fall inside training (the pipeline drains and refills).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Callable, Iterator

PROGRESS_EVERY_S = 20.0  # a progress line at least this often: a user never waits 30 s on silence
WINDOW_PARTS = 10        # the window's parts: their rates are the spread printed
SETTLE = 0.10            # warm-up ends when two consecutive parts' rates agree within this fraction


class Ticker:
    """Calls say(line) every `every` seconds from a thread while a measurement runs: what is being
    measured, the time so far, and an ETA once one can be given (a compile or a warm-up has none)."""

    def __init__(self, say: Callable[[str], None], every: float = PROGRESS_EVERY_S):
        self.say, self.every = say, every
        self.started = time.perf_counter()
        self.phase, self.ends_at, self.then = "starting", None, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-progress", daemon=True)

    def __enter__(self) -> "Ticker":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def set(self, phase: str, seconds_left: float | None = None, then: str = "") -> None:
        self.phase, self.then = phase, then
        self.ends_at = None if seconds_left is None else time.perf_counter() + seconds_left

    def line(self) -> str:
        now = time.perf_counter()
        if self.ends_at is None:
            eta = "ETA once warmed up"
        elif self.ends_at > now:
            eta = f"this part ends in about {self.ends_at - now:.0f} s"
        else:  # the estimate was short (a slow step, the workers' shutdown): say so, never "0 s" for long
            eta = f"this part is {now - self.ends_at:.0f} s past its estimate"
        return f"bench: {self.phase}, {now - self.started:.0f} s so far, {eta}{self.then}"

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.say(self.line())


def endless(loaders) -> Iterator:
    """Train batches epoch after epoch, as training draws them. Persistent workers live on from one
    epoch to the next (shutting them down at an epoch's end broke the next iteration: "Queue is
    closed"); closing the generator shuts them down."""
    epoch = 0
    try:
        while True:
            loaders.train_sampler.set_epoch(epoch)
            yield from loaders.train
            epoch += 1
    finally:
        it = getattr(loaders.train, "_iterator", None)  # the DataLoader's persistent-worker iterator
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()


def measure_window(batches: Iterator, consume: Callable, workers: int, seconds: float, ticker: Ticker,
                   then: str = "") -> dict:
    """Loader figures over a window of `seconds`. consume(batch) -> (images, skipped) does the main
    process's share of the work (to_device). Warm-up lasts at most `seconds` too."""
    seen = {"batches": 0, "skipped": 0}

    def one_round() -> tuple[int, float]:
        images = 0
        for _ in range(workers):
            n, s = consume(next(batches))
            images, seen["batches"], seen["skipped"] = images + n, seen["batches"] + 1, seen["skipped"] + s
        return images, time.perf_counter()

    def part(start: float) -> tuple[int, float]:
        """Whole rounds until at least seconds / WINDOW_PARTS have passed: (images, end time)."""
        images, end = 0, start
        while end - start < seconds / WINDOW_PARTS:
            n, end = one_round()
            images += n
        return images, end

    ticker.set("input pipeline: starting workers", then=then)
    begin = time.perf_counter()
    _, clock = one_round()  # every worker has delivered a batch
    first_round_s = clock - begin
    ticker.set("input pipeline: warm-up", seconds_left=2 * seconds, then=then)
    warm_start, rates, settled = clock, [], False
    while clock - warm_start < seconds and not settled:
        images, end = part(clock)
        rates.append(images / (end - clock))
        clock = end
        settled = len(rates) >= 2 and abs(rates[-1] - rates[-2]) <= SETTLE * max(rates[-2:])
    warmup_s = clock - warm_start
    ticker.set(f"input pipeline: timed window of {seconds:g} s", seconds_left=seconds, then=then)
    window_start, parts, total, batches_before = clock, [], 0, seen["batches"]
    while clock - window_start < seconds:
        images, end = part(clock)
        parts.append(images / (end - clock))
        total += images
        clock = end
    window_s = clock - window_start
    return {
        # The median part, as the model step's median step: a stretch stalled by another process on a
        # shared machine moves the plain mean (kept beside it) and hardly the median.
        "loader_images_per_sec": round(statistics.median(parts), 2),
        "loader_images_per_sec_mean": round(total / window_s, 2),
        "loader_seconds": round(window_s, 3),
        "loader_images": total,
        "loader_batches": seen["batches"] - batches_before,
        "loader_rates": [round(r, 2) for r in parts],
        "loader_rate_min": round(min(parts), 2),
        "loader_rate_max": round(max(parts), 2),
        "loader_warmup_s": round(warmup_s, 3),
        "loader_settled": settled,
        "loader_first_round_s": round(first_round_s, 3),
        "skipped_images": seen["skipped"],
    }
