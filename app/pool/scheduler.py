"""Thread-safe admission queue that hands workers batches of compatible work."""

from __future__ import annotations

import threading
import time
from collections import deque

from app.pool.errors import DeadlineExceeded, PoolClosed, QueueFull
from app.pool.metrics import PoolMetrics
from app.pool.work import WorkItem


class Scheduler:
    """Holds admitted items until a worker takes them.

    `capacity` bounds items admitted and not yet finished (waiting or computing), so a slow
    device shows up as 503s at the door rather than as unbounded memory and latency.
    """

    def __init__(
        self,
        *,
        capacity: int,
        max_batch_images: int,
        batch_wait_s: float,
        retry_after_s: int,
        metrics: PoolMetrics,
        lane: str = "default",
    ) -> None:
        self.lane = lane
        self.capacity = capacity
        self.max_batch_images = max_batch_images
        self.batch_wait_s = batch_wait_s
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self._cond = threading.Condition()
        self._pending: deque[WorkItem] = deque()
        self._in_flight = 0
        self._closed = False
        self._stopped = False

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, item: WorkItem) -> None:
        with self._cond:
            if self._closed:
                self.metrics.rejected.labels(self.lane, "closed").inc()
                raise PoolClosed()
            if self._in_flight >= self.capacity:
                self.metrics.rejected.labels(self.lane, "queue_full").inc()
                raise QueueFull(self.capacity, self.retry_after_s)
            item.enqueued_at = time.monotonic()
            self._pending.append(item)
            self._in_flight += 1
            self._publish()
            self._cond.notify()
        item.future.add_done_callback(lambda future: self._forget_if_cancelled(item, future))

    def _forget_if_cancelled(self, item: WorkItem, future: object) -> None:
        """A caller that gave up frees its queue slot at once, not when a worker gets to it."""
        if not item.future.cancelled():
            return
        with self._cond:
            try:
                self._pending.remove(item)
            except ValueError:
                return  # already taken by a worker, which drops it uncomputed
            self._in_flight -= 1
            self.metrics.dropped.labels(self.lane, "cancelled").inc()
            self._publish()
            self._cond.notify_all()

    def finished(self, count: int) -> None:
        with self._cond:
            self._in_flight -= count
            self._publish()
            self._cond.notify_all()

    def close(self) -> None:
        """Stop admitting; workers go on draining what was accepted."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stop(self) -> list[WorkItem]:
        """Stop handing out work; returns the items that were never started."""
        with self._cond:
            self._closed = self._stopped = True
            left = list(self._pending)
            self._pending.clear()
            self._in_flight -= len(left)
            self._publish()
            self._cond.notify_all()
            return left

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._in_flight == 0, timeout)

    def next_batch(self, poll_s: float = 0.25) -> list[WorkItem] | None:
        """Block until a batch is ready; None once the scheduler is stopped.

        Returns a live batch (futures set running). The caller must report `finished`.
        """
        with self._cond:
            while True:
                if self._stopped:
                    return None
                self._discard_dead()
                if self._pending:
                    break
                self._cond.wait(poll_s)
            first = self._pending.popleft()
            batch, images = [first], first.size
            key = first.batch_key
            if key is not None:
                give_up_at = time.monotonic() + self.batch_wait_s
                while True:
                    images = self._take_compatible(key, batch, images)
                    remaining = give_up_at - time.monotonic()
                    if images >= self.max_batch_images or remaining <= 0 or self._stopped:
                        break
                    self._cond.wait(remaining)
            self._publish()
        return self._start(batch)

    def _take_compatible(self, key: object, batch: list[WorkItem], images: int) -> int:
        kept: deque[WorkItem] = deque()
        while self._pending:
            item = self._pending.popleft()
            if item.batch_key == key and images + item.size <= self.max_batch_images:
                batch.append(item)
                images += item.size
            else:
                kept.append(item)
        self._pending = kept
        return images

    def _discard_dead(self) -> None:
        """Drop, uncomputed, items whose caller has gone or whose deadline has passed."""
        now = time.monotonic()
        alive: deque[WorkItem] = deque()
        for item in self._pending:
            if item.future.cancelled():
                self.metrics.dropped.labels(self.lane, "cancelled").inc()
                self._in_flight -= 1
            elif item.expired(now):
                self.metrics.dropped.labels(self.lane, "deadline").inc()
                item.future.set_exception(DeadlineExceeded())
                self._in_flight -= 1
            else:
                alive.append(item)
        self._pending = alive

    def _start(self, batch: list[WorkItem]) -> list[WorkItem]:
        live: list[WorkItem] = []
        now = time.monotonic()
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                self.metrics.dropped.labels(self.lane, "cancelled").inc()
            elif item.expired(now):
                self.metrics.dropped.labels(self.lane, "deadline").inc()
                item.future.set_exception(DeadlineExceeded())
            else:
                live.append(item)
                continue
            self.finished(1)
        return live

    def _publish(self) -> None:
        self.metrics.queue_length.labels(self.lane).set(len(self._pending))
        self.metrics.in_flight.labels(self.lane).set(self._in_flight)
