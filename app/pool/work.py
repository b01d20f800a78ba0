"""The base of the work items fronts submit to the pool; concrete kinds live in app.runtime."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any


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
