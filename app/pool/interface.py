"""What the services need from a pool: the local `WorkerPool` and the Ray Serve front
(`app.distributed.RemotePool`) both provide it, so routes and services do not change with
the backend."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from typing import Any, Protocol

from app.pool.metrics import PoolMetrics
from app.pool.work import WorkItem


class Pool(Protocol):
    metrics: PoolMetrics

    def start(self, *, load_timeout_s: float | None = None) -> None:
        """Ready to run work once it returns (models loaded, or engines reachable)."""

    def close(self) -> None:
        """Admit no new work (PoolClosed); what was accepted goes on."""

    def shutdown(self, grace_s: float = 30.0) -> int:
        """Stop; returns how many accepted items were abandoned."""

    def submit(self, item: WorkItem) -> concurrent.futures.Future[Any]:
        """Admit an item; its future holds the result. Call it on the event loop thread."""

    async def run(self, item: WorkItem, timeout_s: float | None = None) -> Any:
        """Submit and await (DeadlineExceeded after `timeout_s`)."""

    @property
    def healthy(self) -> bool: ...

    def describe(self) -> list[dict[str, Any]]:
        """One entry per worker: name, device, lane, alive."""

    def forget_models(self, names: Sequence[str]) -> bool:
        """Drop loaded copies of these models, so that the next work loads them from disk
        again (a model retrained under its name). False where the pool cannot."""
