"""Typed work items that fronts submit to the pool."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from app.engines.style import Progress, StyleOptions
from app.engines.style import batch_key as style_batch_key


@dataclass
class WorkStats:
    """Filled in by the worker, read by the front for logs and headers."""

    queue_wait_s: float | None = None
    compute_s: float | None = None
    batch_images: int | None = None
    device: str | None = None


@dataclass(eq=False, kw_only=True)
class WorkItem:
    """One request's unit of work. Items with equal `batch_key` may share a forward pass."""

    request_id: str = ""
    deadline: float | None = None  # time.monotonic() after which the result is useless
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    enqueued_at: float = field(default_factory=time.monotonic)
    stats: WorkStats = field(default_factory=WorkStats)

    @property
    def lane(self) -> str:
        """Each lane has its own queue and workers, so one kind of work cannot starve another."""
        return "default"

    @property
    def size(self) -> int:
        """How many images this item adds to a batch."""
        return 1

    @property
    def batch_key(self) -> Hashable | None:
        """None: never coalesced with other items."""
        return None

    def expired(self, now: float | None = None) -> bool:
        return self.deadline is not None and (now or time.monotonic()) > self.deadline


@dataclass(eq=False, kw_only=True)
class GenerateWork(WorkItem):
    """Run a GAN generator on latents [n, nz] (CPU); the result is uint8 images [n, H, W, C]."""

    model: str
    latents: torch.Tensor

    @property
    def lane(self) -> str:
        return "generate"

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
    on_start: Callable[[], None] | None = None
    on_progress: Callable[[Progress], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def lane(self) -> str:
        return "stylize"

    @property
    def batch_key(self) -> Hashable:
        """Jobs of one output size and loop settings share forward/backward passes."""
        return ("stylize", self.model, *style_batch_key(self.options, self.content.shape))
