"""Image sizes: resizing, the output shape of a job and which jobs can share a batch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from app.engines.style.options import StyleOptions

# VGG19 pools four times before relu5_1: a side under 16 px would vanish.
MIN_SIDE = 16


def scaled(h: int, w: int, long_side: int, min_side: int = 1) -> tuple[int, int]:
    """(H, W) with max(H, W) == long_side and the aspect ratio kept, the short side rounded
    and raised to `min_side` if it falls below (the long side never grows for it)."""
    scale = long_side / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if h <= w:
        return max(min_side, new_h), new_w
    return new_h, max(min_side, new_w)


def resize_long_side(image: torch.Tensor, long_side: int, min_side: int = 1) -> torch.Tensor:
    """uint8 [H, W, 3] resized (antialiased) so that max(H, W) == long_side and the short
    side is at least `min_side`."""
    h, w = image.shape[:2]
    size = scaled(h, w, long_side, min_side)
    if size == (h, w):
        return image
    x = image.permute(2, 0, 1).unsqueeze(0).float()
    y = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()


def fits(shape: Sequence[int], long_side: int) -> bool:
    """Whether an image of this shape, resized to `long_side`, keeps a short side the
    network can use without stretching it. Jobs are checked with it: a 100000x1 image cannot
    be painted at any size."""
    h, w = shape[0], shape[1]
    return round(min(h, w) * long_side / max(h, w)) >= MIN_SIDE


def output_shape(content_shape: Sequence[int], size: int) -> tuple[int, int]:
    """(H, W) of the result for a content image of this shape."""
    return scaled(content_shape[0], content_shape[1], size, MIN_SIDE)


def compute_shape(natural: tuple[int, int], bucket_px: int) -> tuple[int, int]:
    """The shape a job of this natural (output) shape is optimised at: its short side padded
    up to a multiple of `bucket_px`, its long side kept (it is `size`)."""
    if bucket_px <= 0:
        return natural
    h, w = natural

    def up(side: int) -> int:
        return -(-side // bucket_px) * bucket_px

    return (h, up(w)) if h >= w else (up(h), w)


def batch_key(options: StyleOptions, content_shape: Sequence[int]) -> tuple[object, ...]:
    """Jobs with equal keys can share forward and backward passes (at any step: each keeps
    its own step count)."""
    natural = output_shape(content_shape, options.size)
    return (compute_shape(natural, options.bucket_px), options.optimizer,
            options.lbfgs_history, options.adam_lr, options.content_layer,
            options.style_layers, options.precision, options.channels_last)
