"""Named training recipes: `--recipe NAME` sets these options (torch-free; the launcher reads it).

Precedence (config.resolve): defaults < recipe < --config file < command line. The resolved values, recipe
or not, are all written to RUN_DIR/config.toml, so a run's config says everything it trained with.

Each value names where it comes from. Options are distrain's: --lr is per 256 images and scaled linearly
to the real global batch (batch x world x --accum-steps), so a recipe's "0.5 at 1024" is --lr 0.125.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TV_REFS = "https://github.com/pytorch/vision/tree/main/references/classification"
TV_BLOG = "https://pytorch.org/blog/how-to-train-state-of-the-art-models-using-torchvision-latest-primitives/"


@dataclass(frozen=True)
class Recipe:
    summary: str
    source: str
    values: dict            # RunConfig field -> value
    global_batch: int | None = None  # what the published run used (lr scales linearly to the real one)
    notes: dict = field(default_factory=dict)  # field -> where the value comes from, when it is translated


RECIPES: dict[str, Recipe] = {
    "tv-resnet-v1": Recipe(
        summary="torchvision's original ResNet recipe (ResNet-50 IMAGENET1K_V1: 76.130% top-1)",
        source=f"{TV_REFS} README, 'ResNet': torchrun --nproc_per_node=8 train.py --model resnet50 "
               "(defaults: 90 epochs, batch 32 x 8, lr 0.1, momentum 0.9, wd 1e-4, StepLR 30 x 0.1)",
        values=dict(arch="resnet50", epochs=90, batch_size=32, lr=0.1, optimizer="sgd", momentum=0.9,
                    weight_decay=1e-4, decay_norm_bias=True, schedule="step", step_size=30, warmup_epochs=0.0,
                    label_smoothing=0.0, image_size=224, val_resize_size=256, val_crop_size=224),
        notes={"lr": "0.1 for 32 x 8 = 256 images", "batch_size": "32 per GPU x 8 GPUs"}, global_batch=256,
    ),
    "tv-resnet50-v2": Recipe(
        summary="torchvision's new recipe (ResNet-50 IMAGENET1K_V2: 80.858% top-1)",
        source=f"{TV_BLOG} and vision PR #5201: train.py --model resnet50 --batch-size 128 --lr 0.5 "
               "--lr-scheduler cosineannealinglr --lr-warmup-epochs 5 --lr-warmup-method linear --auto-augment "
               "ta_wide --epochs 600 --random-erase 0.1 --weight-decay 0.00002 --norm-weight-decay 0.0 "
               "--label-smoothing 0.1 --mixup-alpha 0.2 --cutmix-alpha 1.0 --train-crop-size 176 --model-ema "
               "--val-resize-size 232 --ra-sampler --ra-reps 4 (8 GPUs)",
        values=dict(arch="resnet50", epochs=600, batch_size=128, lr=0.125, optimizer="sgd", momentum=0.9,
                    weight_decay=2e-5, decay_norm_bias=False, schedule="cosine", lr_min=0.0, warmup_epochs=5.0,
                    label_smoothing=0.1, auto_augment="ta-wide", random_erase=0.1, mixup_alpha=0.2,
                    cutmix_alpha=1.0, model_ema=True, ema_steps=32, ema_decay=0.99998, image_size=176,
                    val_resize_size=232, val_crop_size=224, ra_reps=4),
        notes={"lr": "--lr 0.5 at 128 x 8 = 1024 images, i.e. 0.125 per 256",
               "batch_size": "128 per GPU x 8 GPUs = 1024; on other world sizes the lr scales linearly",
               "decay_norm_bias": "--norm-weight-decay 0.0 (distrain also exempts biases)",
               "image_size": "--train-crop-size 176", "ra_reps": "--ra-sampler --ra-reps 4",
               "auto_augment": "--auto-augment ta_wide", "ema_steps": "torchvision's default --model-ema-steps",
               "ema_decay": "torchvision's default --model-ema-decay", "val_crop_size": "torchvision's default"},
        global_batch=1024,
    ),
}


def expand(name: str | None) -> dict:
    """The options a recipe sets (with `recipe` itself); {} for none. Unknown names fail in validate()."""
    if name is None:
        return {}
    recipe = RECIPES.get(name)
    return {**(recipe.values if recipe else {}), "recipe": name}


def _flag(key: str, value) -> str:
    flag = "--" + key.replace("_", "-")
    return (flag if value else f"--no-{flag[2:]}") if isinstance(value, bool) else f"{flag} {value}"


def describe(name: str) -> str:
    """`distrain recipes`: a recipe's options as command-line flags, each with where it comes from."""
    r = RECIPES[name]
    lines = [f"{name}: {r.summary}", f"  source: {r.source}"]
    if r.global_batch:
        lines.append(f"  published at global batch {r.global_batch} (--lr is per 256 images and scales to yours)")
    for key, value in r.values.items():
        note = r.notes.get(key)
        lines.append(f"    {_flag(key, value):<28}  # {note}" if note else f"    {_flag(key, value)}")
    return "\n".join(lines)


def flags(name: str, cfg=None) -> str:
    """The options a recipe sets as one line of flags, with cfg's values (what the run really uses:
    an option typed on the command line wins over the recipe's)."""
    values = RECIPES[name].values
    return " ".join(_flag(k, getattr(cfg, k) if cfg is not None else v) for k, v in values.items())


def batch_note(name: str, global_batch: int) -> str | None:
    """A line when the run's global batch is not the one the recipe was published with."""
    published = RECIPES[name].global_batch
    if published is None or published == global_batch:
        return None
    return (f"{name} was published at global batch {published}; this run's is {global_batch}, and --lr scales "
            f"linearly to it (set --batch-size or --accum-steps to match)")
