"""The worker pool alone, with scripted executors: batching, backpressure, deadlines, faults."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from app.pool import (
    DeadlineExceeded,
    Lane,
    OutOfMemory,
    PoolClosed,
    QueueFull,
    WorkerCrashed,
    WorkerPool,
    WorkItem,
)
from tests.conftest import FakeExecutor, wait_until


@dataclass(eq=False, kw_only=True)
class Job(WorkItem):
    key: str | None = "k"
    images: int = 1
    payload: Any = None

    @property
    def size(self) -> int:
        return self.images

    @property
    def batch_key(self) -> Hashable | None:
        return self.key


PoolFactory = Callable[..., WorkerPool]


@pytest.fixture
def make_pool() -> Iterator[PoolFactory]:
    """Started single-lane pools on a scripted executor, shut down after the test."""
    pools: list[WorkerPool] = []

    def make(executor: FakeExecutor, **kwargs: Any) -> WorkerPool:
        lane: dict[str, Any] = {"queue_size": 64, "max_batch_images": 8, "batch_wait_ms": 50}
        retry_after_s = kwargs.pop("retry_after_s", 1)
        pool = WorkerPool(["cpu"], lambda _device: executor, lanes=[Lane(**(lane | kwargs))],
                          retry_after_s=retry_after_s, supervise_interval_s=0.05)
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown(1)


def test_requests_for_the_same_key_coalesce_up_to_max_batch_images(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor, max_batch_images=8)
    blocker = Job(key="other", payload="b")
    pool.submit(blocker)
    executor.started.wait(5)
    jobs = [Job(images=3, payload=i) for i in range(5)]  # 15 images: 3+3 | 3+3 | 3
    futures = [pool.submit(j) for j in jobs]
    executor.gate.set()
    assert [f.result(5) for f in futures] == [0, 1, 2, 3, 4]
    sizes = [sum(j.size for j in b) for b in executor.batches[1:]]
    assert sizes == [6, 6, 3]
    assert all(len({j.batch_key for j in b}) == 1 for b in executor.batches)
    assert jobs[0].stats.batch_images == 6


def test_different_keys_never_share_a_batch(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor)
    pool.submit(Job(key="x"))
    executor.started.wait(5)
    futures = [pool.submit(Job(key=k)) for k in ["a", "b", "a", "b", None, None]]
    executor.gate.set()
    for f in futures:
        f.result(5)
    for batch in executor.batches:
        assert len({j.key for j in batch}) == 1
        if batch[0].key is None:
            assert len(batch) == 1


def test_full_queue_is_refused_at_once_and_recovers(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor, queue_size=3, retry_after_s=2)
    admitted = [pool.submit(Job(key=None)) for _ in range(3)]
    t0 = time.monotonic()
    with pytest.raises(QueueFull) as info:
        pool.submit(Job(key=None))
    assert time.monotonic() - t0 < 0.1
    assert info.value.retry_after_s == 2
    executor.gate.set()
    for f in admitted:
        f.result(5)
    pool.submit(Job(key=None)).result(5)  # room again once the queue drained


def test_work_past_its_deadline_is_dropped_uncomputed(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor)
    pool.submit(Job(key="blocker"))
    executor.started.wait(5)
    late = Job(key=None, deadline=time.monotonic() + 0.05)
    future = pool.submit(late)
    time.sleep(0.1)
    executor.gate.set()
    with pytest.raises(DeadlineExceeded):
        future.result(5)
    wait_until(lambda: pool.scheduler.in_flight == 0)
    assert late not in executor.computed


def test_cancelled_work_is_dropped_uncomputed(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor)
    pool.submit(Job(key="blocker"))
    executor.started.wait(5)
    gone = Job(key=None)
    kept = Job(key=None)
    pool.submit(gone).cancel()
    pool.submit(kept)
    executor.gate.set()
    kept.future.result(5)
    wait_until(lambda: pool.scheduler.in_flight == 0)
    assert gone not in executor.computed and kept in executor.computed


def test_async_timeout_cancels_queued_work(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor)
    pool.submit(Job(key="blocker"))
    executor.started.wait(5)
    job = Job(key=None)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(pool.run(job, timeout_s=0.05))
    executor.gate.set()
    wait_until(lambda: pool.scheduler.in_flight == 0)
    assert job not in executor.computed


def test_out_of_memory_splits_the_batch_and_retries(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()

    def oom_above_two(batch: Sequence[WorkItem], max_images: int) -> None:
        if max_images > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    executor.behaviour = oom_above_two
    pool = make_pool(executor)
    job = Job(images=8, payload="ok")
    assert pool.submit(job).result(5) == "ok"
    assert executor.max_images_seen == [8, 4, 2]
    assert pool.metrics.oom_splits._value.get() == 2


def test_out_of_memory_for_a_single_image_fails_cleanly(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()

    def always_oom(batch: Sequence[WorkItem], max_images: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    executor.behaviour = always_oom
    pool = make_pool(executor)
    with pytest.raises(OutOfMemory):
        pool.submit(Job(images=2)).result(5)
    executor.behaviour = None
    assert pool.submit(Job(payload=1)).result(5) == 1


def test_an_exception_fails_only_its_batch_and_the_worker_goes_on(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()

    def explode_on_bad(batch: Sequence[WorkItem], max_images: int) -> None:
        if any(getattr(j, "payload", None) == "bad" for j in batch):
            raise ValueError("boom")

    executor.behaviour = explode_on_bad
    pool = make_pool(executor, batch_wait_ms=0)
    bad = pool.submit(Job(key="bad", payload="bad"))
    with pytest.raises(ValueError, match="boom"):
        bad.result(5)
    assert pool.submit(Job(payload="good")).result(5) == "good"
    assert pool.healthy


class WorkerKiller(BaseException):
    """Escapes the worker's `except Exception`, as a fault in the thread itself would."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_worker_fails_its_batch_and_is_restarted(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()

    def kill(batch: Sequence[WorkItem], max_images: int) -> None:
        if any(getattr(j, "payload", None) == "kill" for j in batch):
            raise WorkerKiller()

    executor.behaviour = kill
    pool = make_pool(executor, batch_wait_ms=0)
    doomed = pool.submit(Job(key=None, payload="kill"))
    with pytest.raises(WorkerCrashed):
        doomed.result(5)
    wait_until(lambda: pool.metrics.worker_restarts._value.get() >= 1)
    assert pool.submit(Job(payload="after")).result(5) == "after"
    wait_until(lambda: pool.healthy)


def test_shutdown_refuses_new_work_and_finishes_accepted_work(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor, batch_wait_ms=0)
    accepted = [pool.submit(Job(key=None, payload=i)) for i in range(3)]
    executor.started.wait(5)
    with concurrent.futures.ThreadPoolExecutor(1) as side:
        stopping = side.submit(pool.shutdown, 10)
        wait_until(lambda: pool.scheduler._closed)
        with pytest.raises(PoolClosed):
            pool.submit(Job())
        executor.gate.set()
        assert stopping.result(10) == 0
    assert [f.result(0) for f in accepted] == [0, 1, 2]


def test_shutdown_grace_bounds_the_wait_and_fails_what_is_left(make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor, batch_wait_ms=0)
    running = pool.submit(Job(key=None))
    executor.started.wait(5)
    queued = pool.submit(Job(key=None))
    t0 = time.monotonic()
    abandoned = pool.shutdown(0.2)
    assert time.monotonic() - t0 < 2
    assert abandoned == 1
    with pytest.raises(PoolClosed):
        queued.result(1)
    executor.gate.set()
    running.result(5)


def test_finished_and_cancelled_work_is_freed_without_the_cyclic_collector(
        make_pool: PoolFactory) -> None:
    """A work item holds an upload's tensors: once done or cancelled, dropping the last
    reference must free it at once (a reference cycle kept them until the cyclic GC ran)."""
    import gc
    import weakref

    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor, batch_wait_ms=0)
    blocker = pool.submit(Job(key=None))
    executor.started.wait(5)
    queued, done = Job(key=None), Job(key=None, payload=1)
    refs = [weakref.ref(queued), weakref.ref(done)]
    gc.disable()
    try:
        pool.submit(queued).cancel()
        finished = pool.submit(done)
        executor.gate.set()
        assert finished.result(5) == 1 and blocker.result(5) is None
        executor.batches.clear()
        executor.computed.clear()
        del queued, done, finished
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_an_admission_that_defers_the_wake_leaves_the_idle_worker_asleep() -> None:
    """`admit(wake=False)` then `wake()`: the pool's event-loop path, so that the requests
    of one loop turn meet the worker as one batch instead of waking it one by one."""
    from app.pool.metrics import PoolMetrics
    from app.pool.scheduler import Scheduler

    scheduler = Scheduler(capacity=8, max_batch_images=8, batch_wait_s=0, retry_after_s=1,
                          metrics=PoolMetrics())
    batches: list[list[WorkItem] | None] = []
    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        taken = threads.submit(lambda: batches.append(scheduler.next_batch(poll_s=30)))
        wait_until(lambda: scheduler._idle_workers == 1)
        first, second = Job(payload=1), Job(payload=2)
        scheduler.admit(first, wake=False)
        time.sleep(0.1)  # a woken worker would have taken `first` alone by now
        assert not batches
        scheduler.admit(second, wake=False)
        scheduler.wake()
        taken.result(5)
    assert batches == [[first, second]]


def test_requests_admitted_in_one_turn_of_the_event_loop_form_one_batch(
        make_pool: PoolFactory) -> None:
    executor = FakeExecutor()
    pool = make_pool(executor, batch_wait_ms=0)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(pool.run(Job(payload=i), timeout_s=5) for i in range(6)))

    assert asyncio.run(burst()) == list(range(6))
    assert [len(batch) for batch in executor.batches] == [6]


def test_queue_gauges_read_the_queue_when_scraped(make_pool: PoolFactory) -> None:
    from prometheus_client import generate_latest

    executor = FakeExecutor()
    executor.gate.clear()
    pool = make_pool(executor, batch_wait_ms=0)

    def gauge(name: str) -> float:
        text = generate_latest(pool.metrics.registry).decode()
        (line,) = [s for s in text.splitlines() if s.startswith(name + "{")]
        return float(line.rsplit(" ", 1)[1])

    running = pool.submit(Job(key="blocker"))
    executor.started.wait(5)
    waiting = [pool.submit(Job(payload=i)) for i in range(3)]
    assert gauge("atelier_queue_length") == 3 and gauge("atelier_in_flight") == 4
    executor.gate.set()
    running.result(5)
    assert [f.result(5) for f in waiting] == [0, 1, 2]
    wait_until(lambda: gauge("atelier_in_flight") == 0)
    assert gauge("atelier_queue_length") == 0
