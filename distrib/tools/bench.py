"""`distrain bench`: measured throughput of the model step, of the input pipeline, or of both.

    run(data=None, synthetic=True, ...)       the model step alone on random device tensors
    run(data=DIR, loader_only=True, ...)      the real input pipeline alone (build_loaders + to_device)
    run(data=DIR, ...)                        both, and which of the two limits training

The result is one flat, JSON-serialisable dict (`distrain bench --json` prints it); `describe` says it
in words. `images_per_sec` is always the figure that answers the question asked: the model's, the
loader's, or the smaller of the two.

What is measured is what training runs: the same model builder, SGD with momentum and weight decay,
the GradScaler with fp16, torch.compile when asked, the same loaders (--decode included) and the same
uint8 -> float normalisation (`to_device`), and training's precision defaults for the device
(`distrib.precision.resolve_precision`): bf16 autocast and channels_last on a GPU that supports bf16, fp32
on the CPU. Warm-up (allocator, cuDNN autotuning, compiling, worker start-up) is run but not timed.
The model step is timed over --steps steps (images/s at the median step); the loader over a window of
--seconds (distrib/tools/bench_loader.py says why a step count is not enough there).
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time

from distrib.config import ConfigError, RunConfig
from distrib.data import formats
from distrib.data.layout import tool_val_split
from distrib.runtime.env import DistEnv, cpu_cores
from distrib.tools.bench_loader import Ticker, endless, measure_window

# torch is imported inside the functions that measure: bad input fails at once, before ~5 s of imports.

WARMUP_STEPS = {"cuda": 5, "cpu": 2}  # cuDNN autotuning (and compiling) needs a few steps; the CPU only the first
IMAGENET_CLASSES = 1000  # head size of the model step when no data says otherwise
DEFAULT_SECONDS = 10.0   # the loader's timed window: long enough that worker rounds and epoch ends average out


def default_workers() -> int:
    """RunConfig's default worker count, capped by the cores this process may use (more only queue up,
    and PyTorch warns about them)."""
    return min(RunConfig.workers, cpu_cores())


def run(data: str | None, synthetic: bool, loader_only: bool, arch: str, image_size: int, batch_size: int,
        workers: int | None, device: str, steps: int, seconds: float = DEFAULT_SECONDS, amp: str = "auto",
        channels_last: bool | None = None, compile: bool = False, decode: str = "workers",
        say=lambda line: None) -> dict:
    """Measure; raise ConfigError (exit 2 in the CLI) for bad input. say(line): progress, at least every 20 s."""
    workers = default_workers() if workers is None else workers
    _check_args(data, synthetic, loader_only, steps, seconds)
    # --synthetic asks for the model step alone (even with --data); --loader-only for the files alone.
    mode = "loader" if loader_only else "synthetic" if synthetic else "both"
    cfg = RunConfig(data=data, val_split=tool_val_split(data, None) if mode != "synthetic" else None,
                    synthetic=mode == "synthetic", arch=arch, image_size=image_size,
                    batch_size=batch_size, workers=workers, amp=amp, channels_last=channels_last, compile=compile,
                    decode=decode, device=device).validate()
    if mode != "synthetic":
        formats.check(cfg)
    import torch

    from distrib.precision import resolve_precision

    dev = _device(device)
    cfg = resolve_precision(cfg, dev)
    if cfg.amp == "fp16" and dev.type != "cuda":
        raise ConfigError("--amp fp16 needs a CUDA GPU (its loss scaling is for GPU autocast); "
                          "use --amp bf16 or --amp off on the CPU")
    result = {"mode": mode, "device": dev.type, "device_name": _device_name(dev), "arch": arch,
              "image_size": image_size, "batch_size": batch_size, "steps": steps,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    with Ticker(say) as ticker:
        if mode in ("loader", "both"):
            result.update(measure_loader(cfg, dev, seconds, ticker, then_model=mode == "both"))
        if mode in ("synthetic", "both"):
            classes = result.get("classes", IMAGENET_CLASSES)
            result.update(measure_model(cfg, dev, steps, classes, ticker))
    if mode == "loader":
        result["images_per_sec"] = result["loader_images_per_sec"]
    elif mode == "synthetic":
        result["images_per_sec"] = result["model_images_per_sec"]
    else:
        loader, model = result["loader_images_per_sec"], result["model_images_per_sec"]
        result["images_per_sec"] = min(loader, model)
        result["bound"] = "input" if loader < model else "compute"
    return result


def _check_args(data, synthetic, loader_only, steps, seconds) -> None:
    """bench's own options; the RunConfig ones are checked by RunConfig.validate()."""
    if not data and not synthetic:
        raise ConfigError("bench needs --data DIR (real files) or --synthetic (model step only)")
    if loader_only and not data:
        raise ConfigError("--loader-only measures real files: pass --data DIR")
    if steps < 1:
        raise ConfigError(f"--steps {steps} must be at least 1; e.g. --steps 20")
    if not seconds > 0:
        raise ConfigError(f"--seconds {seconds} must be positive (the loader's timed window, e.g. 10)")


def _device(want: str):
    import torch

    from distrib.runtime.process_group import pick_device

    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to this process; use --device cpu or auto")
    return pick_device(DistEnv(), want)


def _device_name(dev) -> str:
    if dev.type == "cuda":
        import torch

        return torch.cuda.get_device_name(dev)
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model} ({cpu_cores()} cores)"


def _sync(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)


# ---------------------------------------------------------------- the model step

def measure_model(cfg: RunConfig, dev, steps: int, num_classes: int, ticker: Ticker) -> dict:
    """Forward + backward + SGD step on random device tensors: images/s at the median step time."""
    import torch
    import torch.nn as nn

    from distrib.model import build_model, training_loss
    from distrib.precision import AMP_DTYPES
    from distrib.recipe.optim import build_optimizer

    cuda = dev.type == "cuda"
    amp_dtype = AMP_DTYPES[cfg.amp]
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    torch.backends.cudnn.benchmark = True  # what training does when unseeded
    model = build_model(cfg.arch, num_classes, False, None).to(dev, memory_format=fmt)
    model.train()
    optimizer = build_optimizer(model, cfg, cfg.scaled_lr(1))
    scaler = torch.amp.GradScaler(dev.type, enabled=cfg.amp == "fp16")  # as training: fp16 needs loss scaling
    net = torch.compile(model) if cfg.compile else model
    criterion = nn.CrossEntropyLoss()
    images = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=dev).to(memory_format=fmt)
    labels = torch.randint(0, num_classes, (cfg.batch_size,), device=dev)

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = training_loss(net(images), lambda logits: criterion(logits, labels))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    warmup = WARMUP_STEPS[dev.type]
    try:
        ticker.set("model step: warm-up" + (" (compiling)" if cfg.compile else ""))
        started = time.perf_counter()
        for _ in range(warmup):
            last = time.perf_counter()
            step()
            _sync(dev)
        warmup_s, last_s = time.perf_counter() - started, time.perf_counter() - last
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        ticker.set(f"model step: {steps} timed steps", seconds_left=last_s * steps)  # the last: compiled, tuned
        times = _time_steps(step, steps, dev)
    except torch.cuda.OutOfMemoryError:  # an alias of torch.OutOfMemoryError where that exists
        raise ConfigError(f"--batch-size {cfg.batch_size} does not fit in {_device_name(dev)}'s memory with "
                          f"{cfg.arch} at {cfg.image_size} px; lower --batch-size") from None
    median = statistics.median(times)
    if cuda:
        peak_mb, peak_source = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_memory_allocated"
    else:
        peak_mb, peak_source = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
    return {
        # From the median step: one step stalled by another process on a shared machine moves a mean
        # a lot and a median not at all. model_images_per_sec_mean keeps the plain total / time figure.
        "model_images_per_sec": round(cfg.batch_size / median, 2),
        "model_images_per_sec_mean": round(cfg.batch_size * steps / sum(times), 2),
        "step_time_ms": round(median * 1000, 3),
        "step_time_min_ms": round(min(times) * 1000, 3),
        "warmup_steps": warmup,
        "warmup_s": round(warmup_s, 2),
        "amp": cfg.amp,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "peak_memory_mb": round(peak_mb, 1),
        "peak_memory_source": peak_source,
    }


def _time_steps(step, steps: int, dev) -> list[float]:
    """Seconds of each step. On a GPU, CUDA events between steps: the host queues the steps without
    waiting, as training does, and each interval is the device's time from one step's end to the next's."""
    if dev.type != "cuda":
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return times
    import torch

    marks = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    marks[0].record()
    for mark in marks[1:]:
        step()
        mark.record()
    torch.cuda.synchronize(dev)
    return [a.elapsed_time(b) / 1000 for a, b in zip(marks, marks[1:])]


# ---------------------------------------------------------------- the input pipeline

def measure_loader(cfg: RunConfig, dev, seconds: float, ticker: Ticker, then_model: bool = False) -> dict:
    """Train batches of the real loader (epoch after epoch, as training draws them), through to_device,
    timed over a window of `seconds` after a warm-up (bench_loader.measure_window)."""
    from distrib.data.loaders import build_loaders, to_device

    loaders = build_loaders(cfg, DistEnv(), pin_memory=dev.type == "cuda", device=dev)

    def consume(batch) -> tuple[int, int]:
        images, _ = to_device(batch, dev, channels_last=cfg.channels_last)
        _sync(dev)
        del images
        return batch.labels.numel(), len(batch.skipped)

    batches = endless(loaders)
    try:
        window = measure_window(batches, consume, max(cfg.workers, 1), seconds, ticker,
                                then=" (then the model step)" if then_model else "")
    finally:
        batches.close()  # shuts the persistent workers down before the model step is measured
    return {**window, "workers": cfg.workers, "decode": cfg.decode, "data": os.path.abspath(cfg.data),
            "train_images": loaders.num_train, "classes": len(loaders.classes)}


# ---------------------------------------------------------------- words

def describe(result: dict) -> str:
    """The result in a few lines: what was measured, the figure, and for both, which one limits training."""
    head = (f"{result['arch']} at {result['image_size']} px, batch {result['batch_size']}, "
            f"on {result['device']} ({result['device_name']})")
    lines = []
    if "model_images_per_sec" in result:
        precision = ("fp32" if result["amp"] == "off" else f"{result['amp']} autocast") + (
            " with loss scaling" if result["amp"] == "fp16" else "") + (
            ", channels_last" if result["channels_last"] else "") + (", compiled" if result["compile"] else "")
        lines.append(f"model step: {result['model_images_per_sec']:.1f} img/s, median step "
                     f"{result['step_time_ms']:.1f} ms ({precision}; {result['steps']} steps after "
                     f"{result['warmup_steps']} warm-up in {result['warmup_s']:.1f} s); peak memory "
                     f"{result['peak_memory_mb']:.0f} MB "
                     f"({'CUDA allocated' if result['device'] == 'cuda' else 'process max RSS'})")
    if "loader_images_per_sec" in result:
        decode = " (--decode device)" if result["decode"] == "device" else ""
        settled = "settled" if result["loader_settled"] else "NOT settled: the figure may move; try more --seconds"
        lines.append(f"input pipeline: {result['loader_images_per_sec']:.1f} img/s with {result['workers']} "
                     f"worker(s){decode}: the median of {len(result['loader_rates'])} parts of a "
                     f"{result['loader_seconds']:.1f} s window ({result['loader_batches']} batches), after "
                     f"{result['loader_warmup_s']:.1f} s of warm-up ({settled})")
        lines.append(f"  parts: min {result['loader_rate_min']:.1f}, max {result['loader_rate_max']:.1f}, window "
                     f"mean {result['loader_images_per_sec_mean']:.1f} img/s; {result['train_images']} train "
                     f"images in {result['data']}")
        if result["skipped_images"]:
            lines.append(f"  {result['skipped_images']} unreadable image(s) skipped")
    if result["mode"] == "both":
        loader, model = result["loader_images_per_sec"], result["model_images_per_sec"]
        if result["bound"] == "input":
            hint = "more --workers (cores)" + (", or --decode device," if result["device"] == "cuda" else "")
            lines.append(f"input-bound: the loader gives {loader:.1f} img/s, the model takes {model:.1f} img/s; "
                         f"{hint} would speed training up")
        else:
            lines.append(f"compute-bound: the model takes {model:.1f} img/s, the loader gives {loader:.1f} img/s")
        if result["device"] == "cpu":
            lines.append("  on the CPU the loader and the model share the cores, so training runs slower than either")
    return "\n".join([head, *lines])
