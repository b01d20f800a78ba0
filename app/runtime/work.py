"""The concrete kinds of work the service submits to the pool: GAN sampling and style jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import torch

from app.engines.style import Progress, StyleOptions
from app.engines.style import batch_key as style_batch_key
from app.pool import WorkItem

GENERATE_LANE = "generate"
STYLIZE_LANE = "stylize"


@dataclass(eq=False, kw_only=True)
class GenerateWork(WorkItem):
    """Run a GAN generator on latents [n, nz] (CPU); the result is uint8 images [n, H, W, C]."""

    model: str
    latents: torch.Tensor

    @property
    def lane(self) -> str:
        return GENERATE_LANE

    @property
    def size(self) -> int:
        return int(self.latents.shape[0])

    @property
    def batch_key(self) -> Hashable:
        return ("generate", self.model)


@dataclass(eq=False, kw_only=True)
class StylizeWork(WorkItem):
    """One style-transfer job; the result is an engines.style.StyleResult."""

    model: str
    content: torch.Tensor  # uint8 [H, W, 3]
    styles: list[torch.Tensor]
    options: StyleOptions
    on_start: Callable[[], object] | None = None
    on_progress: Callable[[Progress], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def lane(self) -> str:
        return STYLIZE_LANE

    @property
    def batch_key(self) -> Hashable:
        """Jobs of one output size and loop settings share forward/backward passes."""
        return ("stylize", self.model, *style_batch_key(self.options, self.content.shape))
