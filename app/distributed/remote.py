"""`RemotePool`: the ingress's pool on Ray Serve. Work items go to the engine deployment of
their lane through a Serve handle; the replica's own pool batches them there.

It lives on the ingress's event loop: `submit` and `run` are called there (as the services
do). A style job streams its events back (start, progress, result); cancelling its item
(`item.cancel`, as the service does) cancels the stream, and the replica stops the job at
its next step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from app.distributed.wire import copy_stats
from app.engines.style import Cancelled
from app.pool import (
    DeadlineExceeded,
    PoolClosed,
    PoolMetrics,
    QueueFull,
    WorkerCrashed,
    WorkItem,
)
from app.runtime import GenerateWork, StylizeWork

log = logging.getLogger("atelier.remote")

CANCEL_POLL_S = 0.05  # how soon a cancel request reaches the replica's stream
_REPLICA_LOST = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)


class RemotePool:
    def __init__(self, engines: Mapping[str, DeploymentHandle[Any]], *, queue_capacity: int,
                 retry_after_s: int = 1, metrics: PoolMetrics | None = None) -> None:
        self.engines = dict(engines)  # lane -> handle of the engine deployment serving it
        self.metrics = metrics or PoolMetrics()
        self.queue_capacity = queue_capacity
        self.retry_after_s = retry_after_s
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    # lifecycle
    def start(self, *, load_timeout_s: float | None = None) -> None:
        """Nothing to load here: Serve starts the ingress once its engines are up."""

    def close(self) -> None:
        self._closed = True

    def shutdown(self, grace_s: float = 30.0) -> int:
        self._closed = True
        abandoned = [t for t in self._tasks if not t.done()]
        for task in abandoned:  # called from any thread (the app stops it from one)
            task.get_loop().call_soon_threadsafe(task.cancel)
        return len(abandoned)

    # work
    def submit(self, item: WorkItem) -> concurrent.futures.Future[Any]:
        self._admit(item)
        task = asyncio.get_running_loop().create_task(self._drive(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return item.future

    async def run(self, item: WorkItem, timeout_s: float | None = None) -> Any:
        if not isinstance(item, GenerateWork):
            return await asyncio.wrap_future(self.submit(item))
        self._admit(item)
        try:
            async with asyncio.timeout(timeout_s):
                status, value, stats = await self.engines[item.lane].generate.remote(
                    item.model, item.latents, item.request_id)
        except TimeoutError as exc:
            raise DeadlineExceeded(timeout_s) from exc
        except BaseException as exc:
            raise self._translate(exc, item) from None
        if status == "error":
            raise value.error()
        copy_stats(item.stats, stats)
        return value

    def _admit(self, item: WorkItem) -> None:
        if self._closed:
            raise PoolClosed()
        if item.lane not in self.engines:
            raise LookupError(f"this pool has no lane {item.lane!r}")

    def _translate(self, exc: BaseException, item: WorkItem) -> BaseException:
        if isinstance(exc, BackPressureError):
            return QueueFull(self.queue_capacity, self.retry_after_s)
        if isinstance(exc, _REPLICA_LOST):
            log.warning("engine replica lost while running %s: %s", item.request_id, exc)
            return WorkerCrashed(f"{item.lane} engine replica")
        return exc

    async def _drive(self, item: WorkItem) -> None:
        """Stream a style job's events into its callbacks and future."""
        assert isinstance(item, StylizeWork)
        future = item.future
        stream = cast(DeploymentResponseGenerator[Any], self.engines[item.lane].options(
            stream=True).stylize.remote(item.model, item.content, item.styles, item.options,
                                        item.request_id))
        watcher = asyncio.ensure_future(self._cancel_when_asked(item, stream))
        started = time.monotonic()
        try:
            async for kind, value in stream:
                if kind == "start":
                    if not future.set_running_or_notify_cancel():
                        stream.cancel()  # type: ignore[no-untyped-call]  # cancelled while queued
                        return
                    item.stats.queue_wait_s = time.monotonic() - started
                    if item.on_start is not None:
                        item.on_start()
                elif kind == "progress" and item.on_progress is not None:
                    # The callback encodes the preview image: off the event loop.
                    await asyncio.to_thread(item.on_progress, value)
                elif kind == "result":
                    _settle(future, result=value)
                elif kind == "error":
                    _settle(future, error=value.error())
        except asyncio.CancelledError:  # this pool is shutting down
            stream.cancel()  # type: ignore[no-untyped-call]
            _settle(future, error=Cancelled())
            raise
        except Exception as exc:
            cancelled = item.cancel.is_set() or future.cancelled()
            _settle(future, error=Cancelled() if cancelled else self._translate(exc, item))
        finally:
            watcher.cancel()
            if not future.done():
                _settle(future, error=WorkerCrashed(f"{item.lane} engine replica"))

    async def _cancel_when_asked(self, item: StylizeWork,
                                 stream: DeploymentResponseGenerator[Any]) -> None:
        while not (item.cancel.is_set() or item.future.cancelled()):
            await asyncio.sleep(CANCEL_POLL_S)
        stream.cancel()  # type: ignore[no-untyped-call]

    # health
    @property
    def healthy(self) -> bool:
        return not self._closed

    def forget_models(self, names: Sequence[str]) -> bool:
        """A handle reaches one replica per call, not each: engine replicas keep what they
        loaded until they restart (`serve deploy` again, or a new replica)."""
        return False

    def describe(self) -> list[dict[str, Any]]:
        return [{"name": f"{lane}-engine", "device": "ray", "lane": lane, "alive": True}
                for lane in self.engines]


def _settle(future: concurrent.futures.Future[Any], *, result: Any = None,
            error: BaseException | None = None) -> None:
    if future.done():
        return
    if future.running() or future.set_running_or_notify_cancel():
        with contextlib.suppress(concurrent.futures.InvalidStateError):
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
