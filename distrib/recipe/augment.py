"""Per-image augmentation on uint8 tensors: torchvision's TrivialAugmentWide, RandAugment and AugMix (same
ops, magnitude tables and draws) and RandomErasing, drawn from the per-sample rng.

    aug = Augment.from_config(cfg)        # None when --auto-augment none and --random-erase 0
    params = aug.draw(rng, size)          # plain tuples: the worker path and --decode device share them
    image = aug.apply(image, params)      # 3 x size x size uint8, on any device

Drawing is separate from applying so that the two decode paths cannot drift apart: the worker path draws
and applies in the worker; --decode device draws in the worker (after the crop box and flip, from the same
rng, in the same order) and applies on the device after decoding. Both call `apply`, so on the CPU they give
the same pixels for the same crop.

Faithful to torchvision.transforms (v0.29): op list and magnitudes per policy, one uniform op choice per op
(RandAugment: 2 ops at magnitude bin 9 of 31; TrivialAugmentWide: 1 op, uniform bin of 31; AugMix: severity
3, width 3, depth 1-3, Dirichlet(1) weights), sign flipped with probability 1/2 for signed ops, bilinear
interpolation and black fill for geometric ops (torchvision's reference passes --interpolation bilinear).
RandomErasing is torchvision's (scale 0.02-0.33, ratio 0.3-3.3) with the reference's value 0 after
normalisation, i.e. the ImageNet mean colour here, where images are still uint8.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, NamedTuple

from distrib.preprocess import IMAGENET_MEAN

Chain = tuple[tuple[str, float], ...]  # (op name, magnitude) applied in order


class Params(NamedTuple):
    """Everything drawn for one image: op chains, AugMix weights (None: apply the one chain), erase box."""
    chains: tuple[Chain, ...] = ()
    weights: tuple[float, ...] | None = None   # AugMix: original's weight, then one per chain
    erase: tuple[int, int, int, int] | None = None  # top, left, height, width


def _linspace(lo: float, hi: float, n: int) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _posterize(top: int, steps: int, n: int) -> list[float]:
    return [float(top - round(i / ((n - 1) / steps))) for i in range(n)]


def _space(kind: str, size: int, n: int) -> dict[str, tuple[list[float] | None, bool]]:
    """torchvision's _augmentation_space of each policy: op -> (magnitude bins or None, signed)."""
    if kind == "ta-wide":
        geo, move, rot, col, post = 0.99, 32.0, 135.0, 0.99, _posterize(8, 6, n)
    elif kind == "randaugment":
        geo, move, rot, col, post = 0.3, 150.0 / 331.0 * size, 30.0, 0.9, _posterize(8, 4, n)
    else:  # augmix
        geo, move, rot, col, post = 0.3, size / 3.0, 30.0, 0.9, _posterize(4, 4, n)
    ops = {} if kind == "augmix" else {"Identity": (None, False)}
    ops.update({"ShearX": (_linspace(0, geo, n), True), "ShearY": (_linspace(0, geo, n), True),
                "TranslateX": (_linspace(0, move, n), True), "TranslateY": (_linspace(0, move, n), True),
                "Rotate": (_linspace(0, rot, n), True)})
    colour = {name: (_linspace(0, col, n), True) for name in ("Brightness", "Color", "Contrast", "Sharpness")}
    tail = {"Posterize": (post, False), "Solarize": (_linspace(255.0, 0.0, n), False),
            "AutoContrast": (None, False), "Equalize": (None, False)}
    if kind == "augmix":  # all_ops=True appends the colour ops after the others
        return {**ops, **tail, **colour}
    return {**ops, **colour, **tail}


def _pick(space: dict, rng: random.Random, bin_of: Callable[[int], int]) -> tuple[str, float]:
    """One op, its magnitude bin and sign, in torchvision's order of draws."""
    name = list(space)[rng.randrange(len(space))]
    bins, signed = space[name]
    magnitude = float(bins[bin_of(len(bins))]) if bins else 0.0
    if signed and rng.randrange(2):
        magnitude = -magnitude
    return name, magnitude


def draw_ta_wide(rng: random.Random, size: int) -> Params:
    return Params(((_pick(_space("ta-wide", size, 31), rng, rng.randrange),),))


def draw_randaugment(rng: random.Random, size: int) -> Params:
    space = _space("randaugment", size, 31)
    return Params((tuple(_pick(space, rng, lambda n: 9) for _ in range(2)),))


def draw_augmix(rng: random.Random, size: int, width: int = 3, severity: int = 3) -> Params:
    space = _space("augmix", size, 10)
    beta = _dirichlet(rng, 2)
    mix = _dirichlet(rng, width)
    chains = tuple(tuple(_pick(space, rng, lambda n: rng.randrange(severity)) for _ in range(rng.randint(1, 3)))
                   for _ in range(width))
    return Params(chains, (beta[0], *(w * beta[1] for w in mix)))


def _dirichlet(rng: random.Random, k: int, alpha: float = 1.0) -> list[float]:
    g = [rng.gammavariate(alpha, 1.0) for _ in range(k)]
    return [x / sum(g) for x in g]


POLICIES: dict[str, Callable[[random.Random, int], Params] | None] = {
    "none": None, "ta-wide": draw_ta_wide, "randaugment": draw_randaugment, "augmix": draw_augmix}


def erase_box(rng: random.Random, size: int, p: float, scale=(0.02, 0.33), ratio=(0.3, 3.3)):
    """torchvision's RandomErasing.get_params on a size x size image; None: not erased."""
    if rng.random() >= p:
        return None
    area, log_ratio = size * size, (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        erase_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        h, w = int(round(math.sqrt(erase_area * aspect))), int(round(math.sqrt(erase_area / aspect)))
        if h < size and w < size:
            return rng.randint(0, size - h), rng.randint(0, size - w), h, w
    return None


# ---------------------------------------------------------------- applying (torch from here on)

def _sharpness(img, factor: float):
    """torchvision's adjust_sharpness (blend with a [[1,1,1],[1,5,1],[1,1,1]]/13 blur, border kept) with the
    blur as nine shifted integer sums instead of a float conv2d: ~10x faster on a CPU core, same pixels
    (a sum / 13 is never within 0.038 of a rounding boundary, far beyond float32's error)."""
    import torch

    if img.shape[-1] <= 2 or img.shape[-2] <= 2:
        return img
    x = img.to(torch.int16)
    h, w = x.shape[-2:]
    total = 4 * x[..., 1:-1, 1:-1]
    for dy in range(3):
        for dx in range(3):
            total = total + x[..., dy:h - 2 + dy, dx:w - 2 + dx]
    blurred = img.clone()
    blurred[..., 1:-1, 1:-1] = (total.float() / 13).round_().to(torch.uint8)
    return (factor * img.float() + (1.0 - factor) * blurred.float()).clamp_(0, 255).to(torch.uint8)


def _ops() -> dict[str, Callable]:
    """op name -> fn(uint8 image, magnitude): torchvision.transforms.autoaugment._apply_op, one entry each.
    transforms.v2's affine, rotate and equalize give v1's pixels, faster; tests/test_recipes.py checks each
    op against torchvision's _apply_op."""
    import torchvision.transforms.functional as F
    import torchvision.transforms.v2.functional as F2
    from torchvision.transforms import InterpolationMode

    bi = InterpolationMode.BILINEAR

    def affine(img, shear=(0.0, 0.0), translate=(0, 0), center=None):
        return F2.affine(img, angle=0.0, translate=list(translate), scale=1.0, shear=list(shear),
                         interpolation=bi, fill=None, center=center)

    return {
        "Identity": lambda img, m: img,
        "ShearX": lambda img, m: affine(img, shear=(math.degrees(math.atan(m)), 0.0), center=[0, 0]),
        "ShearY": lambda img, m: affine(img, shear=(0.0, math.degrees(math.atan(m))), center=[0, 0]),
        "TranslateX": lambda img, m: affine(img, translate=(int(m), 0)),
        "TranslateY": lambda img, m: affine(img, translate=(0, int(m))),
        "Rotate": lambda img, m: F2.rotate(img, m, interpolation=bi, fill=None),
        "Brightness": lambda img, m: F.adjust_brightness(img, 1.0 + m),
        "Color": lambda img, m: F.adjust_saturation(img, 1.0 + m),
        "Contrast": lambda img, m: F.adjust_contrast(img, 1.0 + m),
        "Sharpness": lambda img, m: _sharpness(img, 1.0 + m),
        "Posterize": lambda img, m: F.posterize(img, int(m)),
        "Solarize": lambda img, m: F.solarize(img, m),
        "AutoContrast": lambda img, m: F.autocontrast(img),
        "Equalize": lambda img, m: F2.equalize(img),
    }


_OPS: dict[str, Callable] = {}
ERASE_FILL = tuple(round(255 * m) for m in IMAGENET_MEAN)  # 0 after normalisation, as the reference's value=0


def apply(img, params: Params):
    """The drawn augmentation on one 3 x H x W uint8 image (CPU or device); returns a new tensor."""
    import torch

    if not _OPS:
        _OPS.update(_ops())
    if params.weights is None:
        for chain in params.chains:
            for name, magnitude in chain:
                img = _OPS[name](img, magnitude)
    else:  # AugMix: the original and the chains, blended in float and truncated back, as torchvision does
        mix = params.weights[0] * img.float()
        for weight, chain in zip(params.weights[1:], params.chains):
            aug = img
            for name, magnitude in chain:
                aug = _OPS[name](aug, magnitude)
            mix.add_(weight * aug.float())
        img = mix.to(torch.uint8)
    if params.erase is not None:
        top, left, h, w = params.erase
        img = img.clone()
        img[:, top:top + h, left:left + w] = torch.tensor(ERASE_FILL, dtype=img.dtype, device=img.device)[:, None, None]
    return img


@dataclass(frozen=True)
class Augment:
    """The run's per-image policy (after RandomResizedCrop and flip): --auto-augment and --random-erase."""
    policy: str = "none"
    erase_p: float = 0.0

    @classmethod
    def from_config(cls, cfg) -> "Augment | None":
        aug = cls(cfg.auto_augment, cfg.random_erase)
        return aug if aug.policy != "none" or aug.erase_p > 0 else None

    def draw(self, rng: random.Random, size: int) -> Params:
        """Every random choice for one image, in one fixed order: policy first, then erasing."""
        policy = POLICIES[self.policy]
        params = policy(rng, size) if policy else Params()
        return params._replace(erase=erase_box(rng, size, self.erase_p) if self.erase_p > 0 else None)

    def __call__(self, img, rng: random.Random):
        return apply(img, self.draw(rng, img.shape[-1]))
