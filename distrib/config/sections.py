"""The run config's sections: one frozen dataclass per concern, each field with its help, bounds and choices.

`RunConfig` (distrib/config/__init__.py) inherits them all, so a run's options stay flat (`cfg.lr`), while
what an option means and which values it takes are written once, here. The help panel (`group`) is what
`distrain launch --help` shows; the four training sections share the Training panel.
"""

from __future__ import annotations

from dataclasses import dataclass

from distrib.config.fields import (
    MEM_FORM,
    RUNTIME,
    SLURM,
    TOPOLOGY,
    TRAINING,
    endpoint_form,
    nodes_form,
    opt,
    profile_form,
    sbatch_arg_form,
    slurm_name,
    time_form,
)
from distrib.config.recipes import RECIPES


@dataclass(frozen=True)
class TopologyOptions:
    """What runs where (read by the launcher; recorded for reproduction)."""
    nodes: str = opt("1", TOPOLOGY, "Nodes: N, or MIN:MAX for an elastic run.", form=nodes_form)
    gpus: int | None = opt(None, TOPOLOGY, "GPUs per node (default: all visible; 0 = CPU processes).", min=0,
                           fix="use --gpus 0 for CPU or a count of GPUs per node")
    procs: int = opt(1, TOPOLOGY, "Processes per node when running on CPU (--gpus 0).", min=1)
    strategy: str = opt("ddp", TOPOLOGY, "ddp: one process per GPU; dp: one process, nn.DataParallel.",
                        choices=("ddp", "dp"))
    rdzv_endpoint: str | None = opt(None, TOPOLOGY, "HOST:PORT of the c10d rendezvous (multi-node without SLURM).",
                                    form=endpoint_form)
    max_restarts: int = opt(0, TOPOLOGY, "Times torchrun restarts a failed worker group (it resumes from last.pt).",
                            min=0)
    rdzv_last_call: int = opt(30, TOPOLOGY, "Elastic --nodes MIN:MAX: seconds a rendezvous waits for more nodes "
                              "once MIN have joined (torchrun's last call).", min=1)
    dist_timeout: int = opt(600, TOPOLOGY, "Seconds a collective may wait before the run fails naming the rank.",
                            min=1)


@dataclass(frozen=True)
class SlurmOptions:
    slurm: bool = opt(False, SLURM, "Write RUN_DIR/job.sbatch and submit it with sbatch.")
    launcher: str = opt("torchrun", SLURM, "torchrun: one torchrun per node; srun: one task per GPU.",
                        choices=("torchrun", "srun"))
    partition: str | None = opt(None, SLURM, "SLURM partition.", form=slurm_name("partition"))
    account: str | None = opt(None, SLURM, "SLURM account.", form=slurm_name("account"))
    qos: str | None = opt(None, SLURM, "SLURM quality of service.", form=slurm_name("qos"))
    time: str | None = opt(None, SLURM, "Time limit, e.g. 24:00:00 or 2-00:00:00.", form=time_form)
    mem: str | None = opt(None, SLURM, "Memory per node, e.g. 64G or 0 (all).", form=MEM_FORM)
    cpus_per_gpu: int | None = opt(None, SLURM, "CPU cores per GPU (per process on CPU runs).", min=1,
                                   fix="leave it out for SLURM's default")
    exclusive: bool = opt(False, SLURM, "Ask for whole nodes.")
    gpu_directive: str = opt("gpus-per-node", SLURM, "How GPUs are requested.", choices=("gpus-per-node", "gres"))
    sbatch_arg: tuple[str, ...] = opt((), SLURM, "Extra #SBATCH argument, passed through (repeatable).",
                                      form=sbatch_arg_form)
    setup: tuple[str, ...] = opt((), SLURM, "Shell line run before training, e.g. 'module load cuda' (repeatable).")
    max_requeues: int = opt(3, SLURM, "Requeues allowed after preemption or time limit.", min=0)
    signal_seconds: int = opt(300, SLURM, "Seconds before the time limit that SLURM warns the job (USR1).",
                              min=1, max=65535)


@dataclass(frozen=True)
class DataOptions:
    """What is read, and how it becomes a batch."""
    data: str | None = opt(None, TRAINING, "ImageFolder root holding train/ and val/.")
    synthetic: bool = opt(False, TRAINING, "Random images instead of --data (smoke tests, benchmarks).")
    val_split: float | None = opt(None, TRAINING, "For data with train/ only: hold out this fraction of each "
                                  "class of train/ for validation (0 < F < 1; drawn by --seed, the same every run).",
                                  above=0, below=1, fix="e.g. --val-split 0.1")
    image_size: int = opt(224, TRAINING, "Training crop size (validation resizes to size/0.875, then crops).", min=1)
    val_resize_size: int | None = opt(None, TRAINING, "Validation: shorter side after resizing "
                                      "(default: val crop / 0.875).", min=1)
    val_crop_size: int | None = opt(None, TRAINING, "Validation: centre crop size (default: --image-size).", min=1)
    workers: int = opt(4, TRAINING, "Data-loading processes per training process.", min=0)
    decode: str = opt("workers", TRAINING, "Where JPEGs are decoded: workers (CPU processes) or device "
                      "(torchvision's decode_jpeg on the training device, in batches; for input-bound GPU "
                      "nodes).", choices=("workers", "device"))


@dataclass(frozen=True)
class ModelOptions:
    """Which network, from which weights, and how it is run on the device."""
    arch: str = opt("resnet50", TRAINING, "Any torchvision classification model name.")
    pretrained: bool = opt(False, TRAINING, "Start from torchvision's default weights.")
    weights: str | None = opt(None, TRAINING, "Start from a local weights file: a state_dict (bare, or under "
                              "state_dict, model or model_state_dict; module. or _orig_mod. prefixes), .safetensors, a "
                              "distrain checkpoint or export. The classifier is replaced if the class count differs.")
    freeze_backbone: bool = opt(False, TRAINING, "Train only the classifier; the rest (BatchNorm statistics "
                                "included) stays exactly as loaded.")
    amp: str = opt("auto", TRAINING, "Mixed precision; auto: bf16 on GPUs that support it, off on CPU.",
                   choices=("auto", "bf16", "fp16", "off"))
    channels_last: bool | None = opt(None, TRAINING, "Channels-last memory format (default: on GPUs).")
    compile: bool = opt(False, TRAINING, "torch.compile the model (minutes of compiling; pays off on long runs).")
    bucket_mb: int = opt(25, TRAINING, "DDP gradient bucket size in MB.", min=1)
    sync_bn: bool = opt(False, TRAINING, "Synchronise BatchNorm statistics across processes.")


@dataclass(frozen=True)
class OptimOptions:
    """How long and how the weights are stepped: epochs, batch, learning rate and its schedule."""
    epochs: int = opt(90, TRAINING, "Epochs to train.", min=1)
    batch_size: int = opt(32, TRAINING, "Images per process per step.", min=1)
    lr: float = opt(0.1, TRAINING, "Learning rate for a global batch of 256 (scaled linearly).", above=0)
    head_lr_mult: float = opt(1.0, TRAINING, "The classifier's learning rate is this times the rest's.", above=0,
                              fix="e.g. 1 (the same lr as the rest) or 10 (a faster head)")
    optimizer: str = opt("sgd", TRAINING, "Optimizer.", choices=("sgd", "nesterov", "adamw", "rmsprop"))
    momentum: float = opt(0.9, TRAINING, "SGD momentum.", min=0)
    weight_decay: float = opt(1e-4, TRAINING, "Weight decay.", min=0)
    decay_norm_bias: bool = opt(True, TRAINING, "Apply weight decay to norm and bias parameters too.")
    schedule: str = opt("step", TRAINING, "Learning-rate schedule.", choices=("step", "cosine"))
    step_size: int = opt(30, TRAINING, "Epochs between x0.1 decays (--schedule step).", min=1)
    lr_min: float = opt(0.0, TRAINING, "Where the cosine schedule ends, per 256 images like --lr.", min=0)
    warmup_epochs: float = opt(0.0, TRAINING, "Epochs of linear warmup.", min=0)
    label_smoothing: float = opt(0.0, TRAINING, "Label smoothing.", min=0, below=1)
    accum_steps: int = opt(1, TRAINING, "Batches accumulated per optimizer step (global batch = batch x world x K).",
                           min=1)
    clip_grad_norm: float | None = opt(None, TRAINING, "Clip the gradient norm to this (unscaled first under fp16).",
                                       above=0, fix="leave it out for no clipping")
    seed: int | None = opt(None, TRAINING, "Seed for reproducible runs.")
    steps_per_epoch: int | None = opt(None, TRAINING, "Cap on training steps per epoch (quick runs).", min=1)
    log_interval: int = opt(20, TRAINING, "Steps between progress lines and step-level figures (TensorBoard, "
                            "live.json, stragglers); 0 turns them off.", min=0)
    log_grad_norm: bool = opt(False, TRAINING, "Log the gradient norm every --log-interval steps (it is logged "
                              "anyway when --clip-grad-norm is set).")


@dataclass(frozen=True)
class RecipeOptions:
    """The training recipe (distrib/recipe/): augmentation, mixing, EMA; --recipe fills them in."""
    recipe: str | None = opt(None, TRAINING, "Named recipe (`distrain recipes`): sets its options; the config file "
                             "and the command line override them.", choices=tuple(RECIPES),
                             fix="see `distrain recipes`")
    auto_augment: str = opt("none", TRAINING, "Per-image policy after the crop and flip (torchvision's).",
                            choices=("none", "ta-wide", "randaugment", "augmix"))
    random_erase: float = opt(0.0, TRAINING, "Probability of torchvision's RandomErasing per image.", min=0, max=1)
    mixup_alpha: float = opt(0.0, TRAINING, "Mixup's Beta(a, a) (0: off); with --cutmix-alpha, one per batch.", min=0)
    cutmix_alpha: float = opt(0.0, TRAINING, "CutMix's Beta(a, a) (0: off); with --mixup-alpha, one per batch.",
                              min=0)
    ra_reps: int = opt(1, TRAINING, "Repeated augmentation: each image N times per epoch, on different ranks "
                       "(torchvision's RASampler; 1: off).", min=1)
    model_ema: bool = opt(False, TRAINING, "Keep an exponential moving average of the weights; validate it, "
                          "prefer it for best.pt, eval, predict and export.")
    ema_decay: float = opt(0.99998, TRAINING, "EMA decay as torchvision's --model-ema-decay: each update uses "
                           "1 - (1 - d) x global batch x --ema-steps / --epochs.", above=0, below=1)
    ema_steps: int = opt(32, TRAINING, "Optimizer steps between EMA updates.", min=1)


@dataclass(frozen=True)
class RunOptions:
    """Where the run lives and how it starts."""
    run_dir: str | None = opt(None, RUNTIME, "Run directory (default runs/<arch>-<hash of the data and the "
                              "training math>: the same command finds the same run).")
    resume: str = opt("auto", RUNTIME, "auto: continue RUN_DIR/checkpoints/last.pt if any; never; or a PATH.")
    overwrite: bool = opt(False, RUNTIME, "Start afresh in a run dir that holds a run: its checkpoints, metrics, "
                          "TensorBoard events and logs are removed first.")
    device: str = opt("auto", RUNTIME, "Device of `distrain train`.", choices=("auto", "cpu", "cuda"))
    profile: str | None = opt(None, RUNTIME, "START:STEPS: torch.profiler over STEPS training steps after START "
                              "(e.g. 10:5); Chrome trace JSON in RUN_DIR/profile/ and the top operators printed.",
                              form=profile_form)
    profile_ranks: str = opt("0", RUNTIME, "Which ranks --profile traces: 0 (global rank 0) or all.",
                             choices=("0", "all"))
