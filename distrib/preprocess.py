"""The evaluation preprocessing of a model, recorded with it so eval, predict and export apply exactly
what training validated with: resize the shorter side, centre crop, scale to [0, 1], normalise.

Torch-free: the launcher, `distrain predict --model` (onnxruntime only) and export metadata read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VAL_CROP_FRACTION = 0.875  # torchvision's classic ratio: resize to crop / 0.875 (256 for 224), then crop


@dataclass(frozen=True)
class Preprocessing:
    resize_size: int              # shorter side after the antialiased bilinear resize
    crop_size: int                # centre crop, square
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def from_config(cls, cfg) -> "Preprocessing":
        """From a RunConfig (or anything with image_size, val_resize_size, val_crop_size)."""
        crop = getattr(cfg, "val_crop_size", None) or cfg.image_size
        resize = getattr(cfg, "val_resize_size", None) or int(crop / VAL_CROP_FRACTION)
        return cls(resize_size=resize, crop_size=crop)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(resize_size=int(d["resize_size"]), crop_size=int(d["crop_size"]),
                   mean=tuple(d.get("mean", IMAGENET_MEAN)), std=tuple(d.get("std", IMAGENET_STD)),
                   interpolation=d.get("interpolation", "bilinear"))

    @classmethod
    def of_checkpoint(cls, ckpt: dict) -> "Preprocessing | None":
        """What a distrain checkpoint was validated with; None for a file that does not say."""
        if isinstance(ckpt.get("preprocessing"), dict):
            return cls.from_dict(ckpt["preprocessing"])
        config = ckpt.get("config")
        if isinstance(config, dict) and "image_size" in config:  # checkpoints written before the record
            from types import SimpleNamespace

            return cls.from_config(SimpleNamespace(image_size=config["image_size"],
                                                   val_resize_size=config.get("val_resize_size"),
                                                   val_crop_size=config.get("val_crop_size")))
        return None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d
