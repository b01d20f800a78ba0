"""Thread-safe admission queue that hands workers batches of compatible work."""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque

from app.pool.errors import DeadlineExceeded, PoolClosed, QueueFull
from app.pool.metrics import PoolMetrics
from app.pool.work import WorkItem


class Scheduler:
    """Holds admitted items until a worker takes them.

    `capacity` bounds items admitted and not yet finished (waiting or computing), so a slow
    device shows up as 503s at the door rather than as unbounded memory and latency.

    A worker takes at once every pending item compatible with the oldest one (up to
    `max_batch_images`), so batches form by themselves while the device is busy. With
    `batch_wait_s` > 0 it then waits up to that long for more company; a waiting worker is
    woken only when the batch could be full, not by every arrival. With 0 it never waits.
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
        self._lock = threading.RLock()
        self._has_work = threading.Condition(self._lock)  # idle workers wait on it
        self._more_work = threading.Condition(self._lock)  # workers filling a batch
        self._drained = threading.Condition(self._lock)  # wait_idle
        self._pending: deque[WorkItem] = deque()
        self._pending_images = 0
        self._in_flight = 0
        self._closed = False
        self._stopped = False
        self._idle_workers = 0  # workers blocked until anything is pending
        self._filling = 0  # workers waiting for company to fill a batch
        # The gauges read the queue when scraped, instead of being set (a lock each) at
        # every admission, hand-out and finish. Metric children are bound once: `labels()`
        # is a locked dict look-up per call.
        metrics.queue_length.labels(lane).set_function(lambda: len(self._pending))
        metrics.in_flight.labels(lane).set_function(lambda: self._in_flight)
        self._dropped_cancelled = metrics.dropped.labels(lane, "cancelled")
        self._dropped_deadline = metrics.dropped.labels(lane, "deadline")

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def admit(self, item: WorkItem, *, wake: bool = True) -> None:
        """Queue an item. With `wake` False no worker is woken: the caller calls `wake`
        after admitting a burst, so that the burst meets the worker as one batch."""
        with self._lock:
            if self._closed:
                self.metrics.rejected.labels(self.lane, "closed").inc()
                raise PoolClosed()
            if self._in_flight >= self.capacity:
                self.metrics.rejected.labels(self.lane, "queue_full").inc()
                raise QueueFull(self.capacity, self.retry_after_s)
            item.enqueued_at = time.monotonic()
            self._pending.append(item)
            self._pending_images += item.size
            self._in_flight += 1
            if wake:
                self._wake_locked()
        # A weak reference: the future keeps its callbacks after it is done, and a strong
        # one would make item -> future -> callback -> item a cycle that keeps the item's
        # tensors alive until the cyclic garbage collector runs.
        ref = weakref.ref(item)
        item.future.add_done_callback(lambda _future: self._forget_if_cancelled(ref()))

    def wake(self) -> None:
        """Wake a worker for what is pending (after admissions with `wake` False)."""
        with self._lock:
            self._wake_locked()

    def _wake_locked(self) -> None:
        if not self._pending:
            return
        if self._idle_workers:
            self._has_work.notify()
        elif self._filling and self._pending_images >= self.max_batch_images:
            self._more_work.notify()

    def _forget_if_cancelled(self, item: WorkItem | None) -> None:
        """A caller that gave up frees its queue slot at once, not when a worker gets to it."""
        if item is None or not item.future.cancelled():
            return
        with self._lock:
            try:
                self._pending.remove(item)
            except ValueError:
                return  # already taken by a worker, which drops it uncomputed
            self._pending_images -= item.size
            self._in_flight -= 1
            self._dropped_cancelled.inc()
            if self._in_flight == 0:
                self._drained.notify_all()

    def finished(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count
            if self._in_flight == 0:
                self._drained.notify_all()

    def close(self) -> None:
        """Stop admitting; workers go on draining what was accepted."""
        with self._lock:
            self._closed = True

    def stop(self) -> list[WorkItem]:
        """Stop handing out work; returns the items that were never started."""
        with self._lock:
            self._closed = self._stopped = True
            left = list(self._pending)
            self._pending.clear()
            self._pending_images = 0
            self._in_flight -= len(left)
            for condition in (self._has_work, self._more_work, self._drained):
                condition.notify_all()
            return left

    def wait_idle(self, timeout: float) -> bool:
        with self._lock:
            return self._drained.wait_for(lambda: self._in_flight == 0, timeout)

    def next_batch(self, poll_s: float = 0.25) -> list[WorkItem] | None:
        """Block until a batch is ready; None once the scheduler is stopped.

        Returns a live batch (futures set running), empty when every item taken turned out
        dead (those the scheduler counts finished itself). The caller must report `finished`
        for the items it was handed.
        """
        with self._lock:
            while True:
                if self._stopped:
                    return None
                if (first := self._pop_live()) is not None:
                    break
                self._idle_workers += 1
                try:
                    self._has_work.wait(poll_s)
                finally:
                    self._idle_workers -= 1
            batch, images = [first], first.size
            key = first.batch_key
            if key is not None:
                images = self._take_compatible(key, batch, images)
                if self.batch_wait_s > 0 and images < self.max_batch_images:
                    images = self._fill(key, batch, images)
        return self._start(batch)

    def take(self, max_images: int, *, block: bool,
             poll_s: float = 0.25) -> list[WorkItem] | None:
        """For continuous workers: the oldest pending items, of any batch key, that fit in
        `max_images` (live: futures set running); without `block`, possibly none. None once
        the scheduler is stopped. The caller reports `finished` per item handed out."""
        with self._lock:
            while True:
                if self._stopped:
                    return None
                taken: list[WorkItem] = []
                room = max_images
                while room > 0 and self._pending and self._pending[0].size <= room:
                    item = self._pop_live()
                    if item is None:
                        break
                    taken.append(item)
                    room -= item.size
                if taken or not block:
                    break
                self._idle_workers += 1
                try:
                    self._has_work.wait(poll_s)
                finally:
                    self._idle_workers -= 1
        return self._start(taken)

    def _pop_live(self) -> WorkItem | None:
        """The oldest pending item still wanted; the dead ones before it are dropped."""
        now = time.monotonic()
        while self._pending:
            item = self._pending.popleft()
            self._pending_images -= item.size
            if not self._drop_if_dead(item, now):
                return item
        return None

    def _drop_if_dead(self, item: WorkItem, now: float) -> bool:
        """Drop, uncomputed, an item whose caller has gone or whose deadline has passed."""
        if item.future.cancelled():
            self._dropped_cancelled.inc()
        elif item.expired(now):
            self._dropped_deadline.inc()
            item.future.set_exception(DeadlineExceeded())
        else:
            return False
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.notify_all()
        return True

    def _fill(self, key: object, batch: list[WorkItem], images: int) -> int:
        """Wait up to batch_wait_s for more compatible items (the lock is held)."""
        give_up_at = time.monotonic() + self.batch_wait_s
        self._filling += 1
        try:
            while (remaining := give_up_at - time.monotonic()) > 0 and not self._stopped:
                self._more_work.wait(remaining)
                images = self._take_compatible(key, batch, images)
                if images >= self.max_batch_images:
                    break
        finally:
            self._filling -= 1
        return images

    def _take_compatible(self, key: object, batch: list[WorkItem], images: int) -> int:
        """Move pending items with this key into the batch, oldest first, while they fit."""
        if not self._pending:
            return images
        now = time.monotonic()
        room = self.max_batch_images - images
        kept: deque[WorkItem] = deque()
        for item in self._pending:
            if item.batch_key == key and item.size <= room:
                self._pending_images -= item.size
                if not self._drop_if_dead(item, now):
                    batch.append(item)
                    room -= item.size
            else:
                kept.append(item)
        self._pending = kept
        return self.max_batch_images - room

    def _start(self, batch: list[WorkItem]) -> list[WorkItem]:
        """Set the batch's futures running; items whose caller left or whose deadline passed
        are dropped here, uncomputed, and counted finished."""
        live: list[WorkItem] = []
        dead = 0
        now = time.monotonic()
        for item in batch:
            if not item.future.set_running_or_notify_cancel():
                self._dropped_cancelled.inc()
            elif item.expired(now):
                self._dropped_deadline.inc()
                item.future.set_exception(DeadlineExceeded())
            else:
                live.append(item)
                continue
            dead += 1
        if dead:
            self.finished(dead)
        return live
