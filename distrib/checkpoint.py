"""Checkpoints: written by global rank 0 only, atomically, and always loaded with weights_only=True.
`Checkpointer` (at the end) owns a run's saving and resuming; the functions above it are its parts.

A checkpoint is a dict of plain types and tensors (see design.md), so `torch.load(path, weights_only=True)`
loads it and a file that would run code when unpickled is refused.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import shutil
import warnings

import numpy as np
import torch

from distrib.config import ConfigError
from distrib.files import atomic_file, same_bytes_atomic, write_atomic
from distrib.words import position_words

LOW_SPACE_BYTES = 64 * 2**20
log = logging.getLogger("distrain")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written: the message says which file and why."""

    user_facing = True


class UnusableCheckpoint(ConfigError):
    """A file given as a checkpoint or weights that cannot be used (bad input: exit 2, one line)."""


def save_atomic(state: dict, path: str) -> None:
    """Temp file in the same directory, fsync, rename, fsync the directory: a reader sees old or new, never half."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    try:
        with atomic_file(path, "wb", fsync=True, hidden=True) as fh:
            torch.save(state, fh)
    except (OSError, RuntimeError) as e:
        # torch.save's zip writer reports a full disk as "unexpected pos": ask the filesystem instead
        free = shutil.disk_usage(folder).free
        if isinstance(e, OSError) and e.errno == errno.ENOSPC or free < LOW_SPACE_BYTES:
            raise CheckpointError(f"disk full while saving {path} ({free / 2**20:.1f} MiB free); the previous "
                                  "checkpoint is intact. Free space on that filesystem or use another --run-dir"
                                  ) from None
        raise CheckpointError(f"could not save {path}: {e}; the previous checkpoint is intact") from None


def link_atomic(source: str, path: str) -> None:
    """path holds what source holds (best.pt: the last.pt just saved), without serialising it again."""
    try:
        same_bytes_atomic(source, path)
    except OSError as e:
        raise CheckpointError(f"could not save {path}: {e}; the previous checkpoint is intact") from None


def write_position(paths, **position) -> None:
    """RUN_DIR/position.json beside the checkpoints: where last.pt is, readable without torch (the launcher
    decides "complete" and `distrain status` says "epoch N of M" from it)."""
    write_atomic(paths.position, position, as_json=True)


def load(path: str) -> dict:
    """torch.load with weights_only=True; a pickle that would execute code is refused, not run."""
    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise UnusableCheckpoint(f"checkpoint {path} {what}; give the path of a .pt file")
    kind = _not_torch_file(path)
    if kind:
        raise UnusableCheckpoint(f"{path} is not a checkpoint or weights file ({kind}); give a file torch.save "
                                 "wrote (RUN_DIR/checkpoints/best.pt, a state_dict .pt/.pth), a .safetensors "
                                 "file or a `distrain export` folder")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing; the refusal says it
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnusableCheckpoint(f"refusing {path}: it holds Python objects that only a full unpickle could "
                                 f"load ({_unpickler_reason(e)}), and a full unpickle could run code; load it "
                                 "in a trusted Python session and save its state_dict instead") from None
    except (EOFError, RuntimeError, OSError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise UnusableCheckpoint(f"checkpoint {path} is unreadable or truncated ({type(e).__name__}: "
                                 f"{first[:200]}); give an intact .pt file") from None


SIGNATURES = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
              b"RIFF": "a RIFF file (WEBP image?)", b"%PDF": "a PDF", b"\x1f\x8b": "gzip data"}


def _not_torch_file(path: str) -> str | None:
    """What the file is when it cannot be one torch.save wrote (a zip archive, or a pickle for the legacy
    format): a few known signatures, text, or None when it may be one."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    for magic, what in SIGNATURES.items():
        if head.startswith(magic):
            return f"it is {what}"
    if not head:
        return "it is empty"
    try:
        head.decode("utf-8")
        return "it is text"
    except UnicodeDecodeError:
        return "neither a zip archive nor a pickle"


def _unpickler_reason(e: Exception) -> str:
    """The informative line of torch's long weights_only message, e.g. 'unsupported GLOBAL posix.system',
    without its advice to turn the check off."""
    text = str(e)
    _, _, detail = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail or text).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line]
    if not lines:
        return type(e).__name__
    reason = (named or lines)[0].split(" was not an allowed global")[0].split(" whose module")[0]
    reason = reason.removeprefix("Trying to load ").split(". Please")[0].split(" Please")[0].rstrip(" .")
    return reason[:160]


def is_run_checkpoint(ckpt) -> bool:
    """A checkpoint distrain wrote (it names its arch and classes), not a bare weights file."""
    return isinstance(ckpt, dict) and "model" in ckpt and "arch" in ckpt and "classes" in ckpt


def check_fits(ckpt: dict, path: str, arch: str, classes: list[str],
               fix: str = "or --resume never to start afresh") -> None:
    """Refuse a checkpoint made for another model or another class list, before any state is loaded."""
    if not is_run_checkpoint(ckpt):
        raise UnusableCheckpoint(f"{path} is a bare weights file, not a distrain checkpoint (no arch, no class "
                                 "names); give RUN_DIR/checkpoints/best.pt or last.pt")
    if ckpt.get("arch") != arch:
        raise UnusableCheckpoint(f"checkpoint {path} is for --arch {ckpt.get('arch')}, not {arch}; "
                                 f"use --arch {ckpt.get('arch')}, {fix}")
    theirs = list(ckpt.get("classes") or [])
    if theirs != list(classes):
        differ = (f"{len(theirs)} classes but the data has {len(classes)}" if len(theirs) != len(classes) else
                  "other class names than the data (" + ", ".join(
                      f"{a} vs {b}" for a, b in zip(theirs, classes) if a != b)[:120] + ")")
        raise UnusableCheckpoint(f"checkpoint {path} has {differ}; use the dataset it was trained on, {fix}")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    np_state = np.random.get_state()
    state["numpy"] = (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """random.setstate wants tuples; a checkpoint round trip may hand back lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def model_weights(ckpt: dict, ema: bool = True) -> dict:
    """The weights eval, predict and export use: the EMA's when the checkpoint has them (unless ema=False),
    else the trained model's."""
    if ema and isinstance(ckpt.get("model_ema"), dict):
        return {k.removeprefix("module."): v for k, v in ckpt["model_ema"].items() if k.startswith("module.")}
    return ckpt["model"]


class Checkpointer:
    """Owns RUN_DIR/checkpoints: resumes a TrainState from last.pt (or --resume PATH), saves last.pt and
    best.pt. Global rank 0 writes; the other ranks wait at a barrier so nobody runs ahead of a half-saved
    state. Beside the TrainState, a checkpoint records what the model is (arch, classes, preprocessing),
    the run's config and the RNG states."""

    def __init__(self, cfg, env, classes: list[str], steps_per_epoch: int | None = None):
        from distrib.paths import RunPaths

        self.cfg, self.env, self.classes, self.paths = cfg, env, list(classes), RunPaths(cfg.run_dir)
        self.steps_per_epoch = steps_per_epoch

    def resume(self, state) -> bool:
        """--resume auto continues last.pt if it exists; PATH continues that file; never starts afresh."""
        cfg = self.cfg
        path = self.paths.last if cfg.resume == "auto" else cfg.resume
        if cfg.resume == "never" or not os.path.exists(path):
            return False
        ckpt = load(path)
        check_fits(ckpt, path, cfg.arch, self.classes)
        state.load_state_dict(ckpt)
        restore_rng(ckpt["rng"])
        log.info("resumed from %s at %s", path, position_words(state.progress.epoch, state.progress.batch, None))
        return True

    def save(self, state, best: bool) -> None:
        from distrib.preprocess import Preprocessing
        from distrib.runtime.process_group import barrier

        if self.env.is_main:
            ckpt = {**state.state_dict(), "arch": self.cfg.arch, "num_classes": len(self.classes),
                    "classes": self.classes, "config": self.cfg.to_toml_dict(), "rng": rng_state(),
                    "preprocessing": Preprocessing.from_config(self.cfg).as_dict()}
            save_atomic(ckpt, self.paths.last)
            if best:  # the same bytes: a second name of last.pt, not a second serialisation and fsync
                link_atomic(self.paths.last, self.paths.best)
            progress = state.progress
            write_position(self.paths, epoch=progress.epoch, batch=progress.batch // self.cfg.accum_steps,
                           epochs=self.cfg.epochs, batches=self.steps_per_epoch)
        barrier()
