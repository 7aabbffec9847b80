"""The run config: one definition of every option, shared by the CLI, the launcher and every rank.

Each field of `RunConfig` is one long option (`batch_size` is `--batch-size`) and one key of
RUN_DIR/config.toml. Its metadata says which help panel it belongs to and what it means; the Typer
commands in launch/ are generated from these fields, so an option is declared exactly once.

Precedence: command line > --config file > defaults (`resolve`). This module never imports torch.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field, fields

TOPOLOGY, SLURM, TRAINING, RUNTIME = "Topology", "SLURM cluster", "Training", "Run"

# Training options that do not change what is trained: how long (a run continues with more --epochs), how
# fast, and how it is reported. Every other training option is part of a run's identity (training_math).
NOT_TRAINING_MATH = frozenset({"epochs", "workers", "decode", "amp", "channels_last", "compile", "bucket_mb",
                               "log_interval"})


class ConfigError(ValueError):
    """Bad user input: the message says what was given, what is expected, and how to fix it."""


def opt(default, group: str, help: str, choices: tuple[str, ...] | None = None, flag: str | None = None):
    meta = {"group": group, "help": help, "choices": choices, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    # --- topology: what runs where (read by the launcher; recorded for reproduction) ---
    nodes: str = opt("1", TOPOLOGY, "Nodes: N, or MIN:MAX for an elastic run.")
    gpus: int | None = opt(None, TOPOLOGY, "GPUs per node (default: all visible; 0 = CPU processes).")
    procs: int = opt(1, TOPOLOGY, "Processes per node when running on CPU (--gpus 0).")
    strategy: str = opt("ddp", TOPOLOGY, "ddp: one process per GPU; dp: one process, nn.DataParallel.",
                        choices=("ddp", "dp"))
    rdzv_endpoint: str | None = opt(None, TOPOLOGY, "HOST:PORT of the c10d rendezvous (multi-node without SLURM).")
    max_restarts: int = opt(0, TOPOLOGY, "Times torchrun restarts a failed worker group (it resumes from last.pt).")
    dist_timeout: int = opt(600, TOPOLOGY, "Seconds a collective may wait before the run fails naming the rank.")
    # --- SLURM ---
    slurm: bool = opt(False, SLURM, "Write RUN_DIR/job.sbatch and submit it with sbatch.")
    launcher: str = opt("torchrun", SLURM, "torchrun: one torchrun per node; srun: one task per GPU.",
                        choices=("torchrun", "srun"))
    partition: str | None = opt(None, SLURM, "SLURM partition.")
    account: str | None = opt(None, SLURM, "SLURM account.")
    qos: str | None = opt(None, SLURM, "SLURM quality of service.")
    time: str | None = opt(None, SLURM, "Time limit, e.g. 24:00:00 or 2-00:00:00.")
    mem: str | None = opt(None, SLURM, "Memory per node, e.g. 64G or 0 (all).")
    cpus_per_gpu: int | None = opt(None, SLURM, "CPU cores per GPU (per process on CPU runs).")
    exclusive: bool = opt(False, SLURM, "Ask for whole nodes.")
    gpu_directive: str = opt("gpus-per-node", SLURM, "How GPUs are requested.", choices=("gpus-per-node", "gres"))
    sbatch_arg: list[str] = opt([], SLURM, "Extra #SBATCH argument, passed through (repeatable).")
    setup: list[str] = opt([], SLURM, "Shell line run before training, e.g. 'module load cuda' (repeatable).")
    max_requeues: int = opt(3, SLURM, "Requeues allowed after preemption or time limit.")
    signal_seconds: int = opt(300, SLURM, "Seconds before the time limit that SLURM warns the job (USR1).")
    # --- training ---
    data: str | None = opt(None, TRAINING, "ImageFolder root holding train/ and val/.")
    synthetic: bool = opt(False, TRAINING, "Random images instead of --data (smoke tests, benchmarks).")
    val_split: float | None = opt(None, TRAINING, "For data with train/ only: hold out this fraction of each "
                                  "class of train/ for validation (0 < F < 1; drawn by --seed, the same every run).")
    arch: str = opt("resnet50", TRAINING, "Any torchvision classification model name.")
    pretrained: bool = opt(False, TRAINING, "Start from torchvision's default weights.")
    weights: str | None = opt(None, TRAINING, "Start from a local weights file: a state_dict (bare, or under "
                              "state_dict/model/model_state_dict; module. or _orig_mod. prefixes), .safetensors, a "
                              "distrain checkpoint or export. The classifier is replaced if the class count differs.")
    # --- fine-tuning (issue 11)
    freeze_backbone: bool = opt(False, TRAINING, "Train only the classifier; the rest (BatchNorm statistics "
                                "included) stays exactly as loaded.")
    head_lr_mult: float = opt(1.0, TRAINING, "The classifier's learning rate is this times the rest's.")
    # --- end fine-tuning
    epochs: int = opt(90, TRAINING, "Epochs to train.")
    batch_size: int = opt(32, TRAINING, "Images per process per step.")
    lr: float = opt(0.1, TRAINING, "Learning rate for a global batch of 256 (scaled linearly).")
    momentum: float = opt(0.9, TRAINING, "SGD momentum.")
    weight_decay: float = opt(1e-4, TRAINING, "Weight decay.")
    decay_norm_bias: bool = opt(True, TRAINING, "Apply weight decay to norm and bias parameters too.")
    schedule: str = opt("step", TRAINING, "Learning-rate schedule.", choices=("step", "cosine"))
    step_size: int = opt(30, TRAINING, "Epochs between x0.1 decays (--schedule step).")
    warmup_epochs: float = opt(0.0, TRAINING, "Epochs of linear warmup.")
    label_smoothing: float = opt(0.0, TRAINING, "Label smoothing.")
    image_size: int = opt(224, TRAINING, "Training crop size (validation resizes to size/0.875, then crops).")
    val_resize_size: int | None = opt(None, TRAINING, "Validation: shorter side after resizing "
                                      "(default: val crop / 0.875).")
    val_crop_size: int | None = opt(None, TRAINING, "Validation: centre crop size (default: --image-size).")
    workers: int = opt(4, TRAINING, "Data-loading processes per training process.")
    decode: str = opt("workers", TRAINING, "Where JPEGs are decoded: workers (CPU processes) or device "
                      "(torchvision.io.decode_jpeg on the training device, in batches; for input-bound GPU "
                      "nodes).", choices=("workers", "device"))
    amp: str = opt("auto", TRAINING, "Mixed precision; auto: bf16 on GPUs that support it, off on CPU.",
                   choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool | None = opt(None, TRAINING, "Channels-last memory format (default: on GPUs).")
    compile: bool = opt(False, TRAINING, "torch.compile the model (minutes of compiling; pays off on long runs).")
    bucket_mb: int = opt(25, TRAINING, "DDP gradient bucket size in MB.")
    sync_bn: bool = opt(False, TRAINING, "Synchronise BatchNorm statistics across processes.")
    seed: int | None = opt(None, TRAINING, "Seed for reproducible runs.")
    steps_per_epoch: int | None = opt(None, TRAINING, "Cap on training steps per epoch (quick runs).")
    log_interval: int = opt(20, TRAINING, "Steps between progress lines.")
    # --- training recipe (distrib/recipe/): augmentation, mixing, EMA, optimizer; --recipe fills them in ---
    recipe: str | None = opt(None, TRAINING, "Named recipe (`distrain recipes`): sets its options; the config file "
                             "and the command line override them.")
    auto_augment: str = opt("none", TRAINING, "Per-image policy after the crop and flip (torchvision's).",
                            choices=("none", "ta-wide", "randaugment", "augmix"))
    random_erase: float = opt(0.0, TRAINING, "Probability of torchvision's RandomErasing per image.")
    mixup_alpha: float = opt(0.0, TRAINING, "Mixup's Beta(a, a) (0: off); with --cutmix-alpha, one per batch.")
    cutmix_alpha: float = opt(0.0, TRAINING, "CutMix's Beta(a, a) (0: off); with --mixup-alpha, one per batch.")
    model_ema: bool = opt(False, TRAINING, "Keep an exponential moving average of the weights; validate it, "
                          "prefer it for best.pt, eval, predict and export.")
    ema_decay: float = opt(0.99998, TRAINING, "EMA decay as torchvision's --model-ema-decay: each update uses "
                           "1 - (1 - d) x global batch x --ema-steps / --epochs.")
    ema_steps: int = opt(32, TRAINING, "Optimizer steps between EMA updates.")
    optimizer: str = opt("sgd", TRAINING, "Optimizer.", choices=("sgd", "nesterov", "adamw", "rmsprop"))
    accum_steps: int = opt(1, TRAINING, "Batches accumulated per optimizer step (global batch = batch x world x K).")
    clip_grad_norm: float | None = opt(None, TRAINING, "Clip the gradient norm to this (unscaled first under fp16).")
    ra_reps: int = opt(1, TRAINING, "Repeated augmentation: each image N times per epoch, on different ranks "
                       "(torchvision's RASampler; 1: off).")
    lr_min: float = opt(0.0, TRAINING, "Where the cosine schedule ends, per 256 images like --lr.")
    # --- run ---
    run_dir: str | None = opt(None, RUNTIME, "Run directory (default runs/<arch>-<hash of the data and the "
                              "training math>: the same command finds the same run).")
    resume: str = opt("auto", RUNTIME, "auto: continue RUN_DIR/checkpoints/last.pt if any; never; or a PATH.")
    overwrite: bool = opt(False, RUNTIME, "Start afresh in a run dir that holds a run: its checkpoints, metrics, "
                          "TensorBoard events and logs are removed first.")
    device: str = opt("auto", RUNTIME, "Device of `distrain train`.", choices=("auto", "cpu", "cuda"))

    # ---- derived values ----
    def min_max_nodes(self) -> tuple[int, int]:
        lo, _, hi = self.nodes.partition(":")
        return int(lo), int(hi or lo)

    def validate(self) -> "RunConfig":
        """Checks that need nothing but the values themselves; raises ConfigError with the fix."""
        m = re.fullmatch(r"(\d+)(?::(\d+))?", self.nodes)
        if not m:
            raise ConfigError(f"--nodes {self.nodes!r} is not N or MIN:MAX; use e.g. --nodes 2 or --nodes 1:4")
        lo, hi = self.min_max_nodes()
        if lo < 1 or hi < lo:
            raise ConfigError(f"--nodes {self.nodes} needs 1 <= MIN <= MAX; use e.g. --nodes 1 or --nodes 2:4")
        for name in ("procs", "epochs", "batch_size", "image_size", "log_interval", "dist_timeout", "bucket_mb"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)} must be at least 1")
        for name in ("max_restarts", "workers", "max_requeues", "signal_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)} must be 0 or more")
        for name in ("val_resize_size", "val_crop_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)} must be at least 1")
        if self.gpus is not None and self.gpus < 0:
            raise ConfigError(f"--gpus {self.gpus} is negative; use --gpus 0 for CPU or a count of GPUs per node")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ConfigError(f"--steps-per-epoch {self.steps_per_epoch} must be at least 1")
        if self.lr <= 0:
            raise ConfigError(f"--lr {self.lr} must be positive")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)")
        self._validate_recipe_options()
        if self.val_split is not None and not 0 < self.val_split < 1:
            raise ConfigError(f"--val-split {self.val_split} must be between 0 and 1; e.g. --val-split 0.1")
        if self.strategy == "dp" and hi > 1:
            raise ConfigError("--strategy dp runs one process on one node; use --strategy ddp with --nodes > 1")
        if self.strategy == "dp" and self.procs > 1:
            raise ConfigError(f"--strategy dp runs one process (nn.DataParallel over the node's GPUs), not --procs "
                              f"{self.procs}; use --strategy ddp --procs {self.procs}, or drop --procs")
        if self.head_lr_mult <= 0:
            raise ConfigError(f"--head-lr-mult {self.head_lr_mult} must be positive (1 = the same lr as the rest)")
        if self.freeze_backbone and self.sync_bn:
            raise ConfigError("--freeze-backbone keeps every BatchNorm's statistics as loaded, so --sync-bn has "
                              "nothing to synchronise; drop --sync-bn")
        if self.pretrained and self.weights:
            raise ConfigError("--pretrained and --weights both given; keep one of them")
        if not self.synthetic and not self.data:
            raise ConfigError("no data: pass --data DIR (an ImageFolder root with train/ and val/) or --synthetic")
        if self.weights and not os.path.exists(self.weights):
            raise ConfigError(f"--weights {self.weights}: no such file; give a local .pt/.pth/.safetensors "
                              "state dict or a distrain export folder")
        if self.resume not in ("auto", "never") and not os.path.isfile(self.resume):
            raise ConfigError(f"--resume {self.resume}: no such checkpoint file; give a .pt path, 'auto' or 'never'")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"--{_flag(f.name)} {getattr(self, f.name)!r} is not one of {', '.join(choices)}")
        return self

    def training_math(self) -> dict:
        """The options that change what is trained (not where, how fast or for how long): a run dir holds
        one run of these values. New training options count unless listed in NOT_TRAINING_MATH."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.metadata["group"] == TRAINING and f.name not in NOT_TRAINING_MATH}
        if out.get("data"):
            out["data"] = os.path.normpath(out["data"])
        return out

    def global_batch(self, world_size: int) -> int:
        """Images per optimizer step: batch x world x --accum-steps."""
        return self.batch_size * world_size * self.accum_steps

    def scaled_lr(self, world_size: int) -> float:
        """--lr is given per 256 images; linear scaling rule (Goyal et al. 2017) to the global batch."""
        return self.lr * self.global_batch(world_size) / 256

    def _validate_recipe_options(self) -> None:
        from distrib.config.recipes import RECIPES

        if self.recipe is not None and self.recipe not in RECIPES:
            raise ConfigError(f"--recipe {self.recipe!r} is not one of {', '.join(RECIPES)}; see `distrain recipes`")
        if not 0 <= self.random_erase <= 1:
            raise ConfigError(f"--random-erase {self.random_erase} must be a probability in [0, 1]")
        for name in ("mixup_alpha", "cutmix_alpha", "lr_min"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)} must be 0 or more")
        for name in ("ema_steps", "accum_steps", "ra_reps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{_flag(name)} {getattr(self, name)} must be at least 1")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"--ema-decay {self.ema_decay} must be in (0, 1), e.g. 0.99998")
        if self.clip_grad_norm is not None and self.clip_grad_norm <= 0:
            raise ConfigError(f"--clip-grad-norm {self.clip_grad_norm} must be positive (leave it out for no clipping)")
        if self.lr_min >= self.lr:
            raise ConfigError(f"--lr-min {self.lr_min} must be below --lr {self.lr}")

    def with_run_dir(self) -> "RunConfig":
        """Fill in the default run dir once: runs/<arch>-<hash of the data path and the training math>.
        The same command (on any node, at any time, with more --epochs) finds the same run and resumes it.
        Only values that differ from the defaults enter the hash, so a new option leaves old names alone;
        the data path is hashed as typed (relative paths go with the relative runs/ folder)."""
        if self.run_dir:
            return self
        import hashlib
        import json

        defaults = RunConfig().training_math()
        key = {k: v for k, v in self.training_math().items() if v != defaults.get(k)}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return dataclasses.replace(self, run_dir=os.path.join("runs", f"{self.arch}-{digest}"))

    def to_toml_dict(self) -> dict:
        """Plain TOML-able values: None is left out (TOML has no null)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def option_fields() -> list[dataclasses.Field]:
    return list(fields(RunConfig))


def _coerce(name: str, value, hint) -> object:
    """Check one value read from a TOML file against the field's type."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None and type(None) in typing.get_args(hint):
        return None
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"config key {name!r}: expected a list of strings, got {value!r}")
    want = args[0] if args else hint
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is str and name == "nodes" and isinstance(value, int):
        return str(value)
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"config key {name!r}: expected {want.__name__}, got {type(value).__name__} {value!r}")


def load_toml(path: str) -> dict:
    """Read a config file into {field: value}; unknown keys and wrong types are errors naming the key."""
    import tomllib  # only when a file is read: the CLI's --help stays fast

    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        hint = os.path.join(path, "config.toml")
        hint = f"; did you mean --config {hint}?" if os.path.isfile(hint) else "; give a .toml file"
        raise ConfigError(f"--config {path} is a directory{hint}") from None
    except PermissionError:
        raise ConfigError(f"--config {path}: permission denied; make it readable") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a text file; give a .toml file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    raw = {k.replace("-", "_"): v for k, v in raw.items()}
    hints = typing.get_type_hints(RunConfig)
    out = {}
    for key, value in raw.items():
        if key not in hints:
            close = [f for f in hints if f.startswith(key[:3])]
            hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
            raise ConfigError(f"config key {key!r} in {path} is not an option{hint}; remove it or fix its name")
        out[key] = _coerce(key, value, hints[key])
    return out


def resolve(cli: dict, config_file: str | None = None) -> RunConfig:
    """The one precedence rule: command line > config file > --recipe > defaults."""
    from distrib.config.recipes import expand

    from_file = load_toml(config_file) if config_file else {}
    merged = expand(cli.get("recipe", from_file.get("recipe")))
    merged.update(from_file)
    merged.update(cli)
    return RunConfig(**merged)


def read_run_config(path: str) -> RunConfig:
    """What a rank does: read RUN_DIR/config.toml as written by the launcher."""
    return RunConfig(**load_toml(path))


def write_run_config(cfg: RunConfig, path: str) -> None:
    import tomli_w

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        tomli_w.dump(cfg.to_toml_dict(), fh)
    os.replace(tmp, path)
