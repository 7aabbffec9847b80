"""Pictures as tensors (CHW uint8), without matplotlib: a batch grid, a confusion matrix, a labelled grid.

TensorBoard's `add_image` and torchvision's `write_png` both take these as they are.
"""

from __future__ import annotations

import torch
from torchvision.utils import draw_bounding_boxes, make_grid

from distrib.preprocess import IMAGENET_MEAN, IMAGENET_STD


def denormalise(images: torch.Tensor) -> torch.Tensor:
    """Normalised float NCHW (what the model sees) -> uint8 NCHW on the CPU, undoing ImageNet normalisation."""
    x = images.detach().float().cpu().contiguous()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def batch_grid(images: torch.Tensor, limit: int = 64) -> torch.Tensor:
    """The first `limit` images of a normalised batch as one CHW uint8 grid."""
    pictures = denormalise(images[:limit])
    return make_grid(pictures, nrow=min(8, len(pictures)), padding=2, pad_value=255)


def _upscale(pictures: torch.Tensor, at_least: int) -> torch.Tensor:
    """Small training crops (32 px) get room for a caption: nearest-neighbour, whole multiples."""
    factor = max(1, -(-at_least // pictures.shape[-1]))
    return pictures.repeat_interleave(factor, dim=-1).repeat_interleave(factor, dim=-2) if factor > 1 else pictures


def labelled_grid(pictures: torch.Tensor, captions: list[str], colour: str = "red") -> torch.Tensor:
    """uint8 NCHW pictures, each framed and captioned (torchvision's own box-and-label drawing), as a grid."""
    pictures = _upscale(pictures, 96)
    h, w = pictures.shape[-2:]
    box = torch.tensor([[0, 0, w - 1, h - 1]])
    drawn = [draw_bounding_boxes(p, box, labels=[c], colors=colour, width=2, label_colors="white",
                                 label_background_colors="black", fill_labels=True)
             for p, c in zip(pictures, captions)]
    return make_grid(torch.stack(drawn), nrow=min(4, len(drawn)), padding=4, pad_value=255)


MAX_IMAGE_CLASSES = 50  # beyond this a cell is too small to read: the text report stays


def confusion_image(counts: torch.Tensor, size: int = 400) -> torch.Tensor:
    """Rows: true class; columns: predicted. Each row normalised (recall per class), white (0) to dark blue
    (1), a thin grey grid between cells; the diagonal is where a good model is dark."""
    n = counts.shape[0]
    cell = max(4, size // max(n, 1))
    rows = counts.double().sum(dim=1, keepdim=True).clamp_(min=1)
    share = (counts.double() / rows).float()                        # n x n in [0, 1]
    white, blue = torch.tensor([255.0, 255.0, 255.0]), torch.tensor([8.0, 48.0, 107.0])
    colours = white + share[..., None] * (blue - white)             # n x n x 3
    picture = colours.repeat_interleave(cell, 0).repeat_interleave(cell, 1)  # (n*cell) x (n*cell) x 3
    grid = torch.zeros(n * cell, n * cell, dtype=torch.bool)
    grid[::cell, :] = True
    grid[:, ::cell] = True
    picture[grid] = 160.0
    return picture.permute(2, 0, 1).round().to(torch.uint8).contiguous()
