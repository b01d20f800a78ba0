"""Settings of a style-transfer job and the types its results and progress come in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

Optimizer = Literal["lbfgs", "adam"]
Precision = Literal["fp32", "bf16"]
Init = Literal["content", "noise", "random"]
PreserveColor = Literal["none", "luminance", "match"]


@dataclass(frozen=True)
class StyleOptions:
    steps: int = 300
    size: int = 512
    content_weight: float = 1.0
    style_weight: float = 30.0
    tv_weight: float = 1.0
    optimizer: Optimizer = "lbfgs"
    init: Init = "content"
    style_scale: float = 1.0
    style_blend: tuple[float, ...] | None = None
    preserve_color: PreserveColor = "none"
    seed: int = 0
    content_layer: str = "relu4_2"
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    lbfgs_history: int = 100
    # bf16 autocast runs the convolutions in bfloat16; Gram matrices and losses stay fp32
    # (fp16 overflows in the Gram matrix). channels_last suits tensor cores on GPUs.
    precision: Precision = "fp32"
    channels_last: bool = False
    adam_lr: float = 5.0
    progress_every: int = 10
    preview_every: int = 0  # 0: no previews
    preview_size: int = 160
    # Shape buckets: the short side of the compute shape is padded up to a multiple of this
    # (0: compute at the natural shape), so jobs of similar aspect ratios share a shape, a
    # batch and the device's tuned kernels; the result is cropped back.
    bucket_px: int = 0


@dataclass
class Losses:
    content: float
    style: float
    tv: float
    total: float


@dataclass
class Progress:
    step: int
    steps: int
    losses: Losses
    preview: torch.Tensor | None = None  # uint8 [h, w, 3], when a preview was due


@dataclass
class StyleResult:
    image: torch.Tensor  # uint8 [H, W, 3]
    losses: Losses
    steps: int
    seconds: float
    history: list[Losses] = field(default_factory=list)


class Cancelled(Exception):
    """The job was cancelled between two steps."""
