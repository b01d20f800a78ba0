"""Image sizes: resizing, the output shape of a job and which jobs can share a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from app.engines.style.options import StyleOptions

# VGG19 pools four times before relu5_1: a side under 16 px would vanish.
MIN_SIDE = 16


def resize_long_side(image: torch.Tensor, long_side: int, min_side: int = 1) -> torch.Tensor:
    """uint8 [H, W, 3] resized (antialiased) so that max(H, W) == long_side, unless that
    would make the short side smaller than `min_side`."""
    h, w = image.shape[:2]
    scale = max(long_side / max(h, w), min_side / min(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    x = image.permute(2, 0, 1).unsqueeze(0).float()
    y = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()


def fits(shape: Sequence[int], long_side: int) -> bool:
    """Whether an image of this shape, resized to `long_side`, keeps a short side the
    network can use. Jobs must be checked with it: otherwise the minimum short side would
    win over the long side and a 100000x1 image would ask for gigabytes."""
    h, w = shape[0], shape[1]
    return round(min(h, w) * long_side / max(h, w)) >= MIN_SIDE


def output_shape(content_shape: Sequence[int], size: int) -> tuple[int, int]:
    """(H, W) of the result for a content image of this shape."""
    h, w = content_shape[0], content_shape[1]
    scale = max(size / max(h, w), MIN_SIDE / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def batch_key(options: StyleOptions, content_shape: Sequence[int]) -> tuple[object, ...]:
    """Jobs with equal keys can share forward and backward passes."""
    return (output_shape(content_shape, options.size), options.steps, options.optimizer,
            options.lbfgs_history, options.adam_lr, options.content_layer,
            options.style_layers, options.precision, options.channels_last)
