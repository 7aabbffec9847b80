"""Torchvision's classification model names, known without importing torch (the CLI must stay instant).

tests/test_cli.py checks this list against the installed torchvision; a name missing here is still
accepted when the installed torchvision knows it.
"""

from __future__ import annotations

import difflib

from distrib.config import ConfigError

KNOWN = (
    'alexnet', 'convnext_base', 'convnext_large', 'convnext_small', 'convnext_tiny', 'densenet121',
    'densenet161', 'densenet169', 'densenet201', 'efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2',
    'efficientnet_b3', 'efficientnet_b4', 'efficientnet_b5', 'efficientnet_b6', 'efficientnet_b7',
    'efficientnet_v2_l', 'efficientnet_v2_m', 'efficientnet_v2_s', 'googlenet', 'inception_v3', 'maxvit_t',
    'mnasnet0_5', 'mnasnet0_75', 'mnasnet1_0', 'mnasnet1_3', 'mobilenet_v2', 'mobilenet_v3_large',
    'mobilenet_v3_small', 'regnet_x_16gf', 'regnet_x_1_6gf', 'regnet_x_32gf', 'regnet_x_3_2gf',
    'regnet_x_400mf', 'regnet_x_800mf', 'regnet_x_8gf', 'regnet_y_128gf', 'regnet_y_16gf', 'regnet_y_1_6gf',
    'regnet_y_32gf', 'regnet_y_3_2gf', 'regnet_y_400mf', 'regnet_y_800mf', 'regnet_y_8gf', 'resnet101',
    'resnet152', 'resnet18', 'resnet34', 'resnet50', 'resnext101_32x8d', 'resnext101_64x4d',
    'resnext50_32x4d', 'shufflenet_v2_x0_5', 'shufflenet_v2_x1_0', 'shufflenet_v2_x1_5', 'shufflenet_v2_x2_0',
    'squeezenet1_0', 'squeezenet1_1', 'swin_b', 'swin_s', 'swin_t', 'swin_v2_b', 'swin_v2_s', 'swin_v2_t',
    'vgg11', 'vgg11_bn', 'vgg13', 'vgg13_bn', 'vgg16', 'vgg16_bn', 'vgg19', 'vgg19_bn', 'vit_b_16',
    'vit_b_32', 'vit_h_14', 'vit_l_16', 'vit_l_32', 'wide_resnet101_2', 'wide_resnet50_2',
)


# Image sizes some archs need, by name prefix: (smallest, largest or None, why). The rest take any
# --image-size from 32 px up. Checked before launch: otherwise the first forward fails inside every rank.
SIZE_RULES = {
    "vit_": (224, 224, "its position embeddings are laid out for 224 x 224"),
    "maxvit_": (224, 224, "its attention windows are laid out for 224 x 224"),
    "inception_v3": (299, None, "its auxiliary classifier needs a 17 x 17 feature map"),
    "alexnet": (64, None, "its three max-pools need a 64 px input"),
}


def check_image_size(arch: str, image_size: int) -> None:
    rule = next((r for prefix, r in SIZE_RULES.items() if arch.startswith(prefix)), None)
    if rule is None:
        return
    low, high, why = rule
    if image_size < low or (high is not None and image_size > high):
        sizes = f"--image-size {low} only" if low == high else f"--image-size {low} or more"
        raise ConfigError(f"--arch {arch} trains at {sizes} ({why}), not {image_size}; use --image-size {low}")


def check_arch(arch: str, image_size: int | None = None) -> None:
    if image_size is not None:
        check_image_size(arch, image_size)
    if arch in KNOWN:
        return
    try:
        import torchvision  # only for a name this list does not know: a newer torchvision may
    except ImportError:
        names = list(KNOWN)
    else:
        names = torchvision.models.list_models(module=torchvision.models)
        if arch in names:
            return
    close = difflib.get_close_matches(arch, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see torchvision.models.list_models()"
    raise ConfigError(f"--arch {arch!r} is not a torchvision classification model; {hint}")
