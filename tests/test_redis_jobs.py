"""What only the shared store does: several processes on one Redis (a real redis-server).

Two `RedisJobStore`s in one test stand for two server processes: they share nothing but
Redis. A process that dies is a real one, killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.services.jobs import JobLimit, JobNotFound, JobStatus, JobStore, Losses
from app.services.redisjobs import RedisJobStore
from app.settings import PROJECT_ROOT
from tests.redisserver import RedisServer, require

LOSSES = Losses(content=1.0, style=2.0, tv=0.5, total=3.5)

MakeStore = Callable[..., RedisJobStore]


@pytest.fixture
def make_store(redis_url: str) -> Iterator[MakeStore]:
    """Stores on the test's Redis (each one a process, as far as the store can tell)."""
    stores: list[RedisJobStore] = []

    def make(**overrides: Any) -> RedisJobStore:
        limits: dict[str, Any] = {"max_active": 8, "max_jobs": 16, "ttl_s": 60.0,
                                  "retry_after_s": 9} | overrides
        stores.append(RedisJobStore(redis_url, **limits))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


def finish(store: JobStore, job: Any, content: bytes) -> None:
    asyncio.run(store.write_result(job, content, "png"))
    store.succeed(job, media_type="image/png", step=job.steps, losses=LOSSES, seconds=0.5)


def test_a_job_made_in_one_process_is_seen_followed_and_fetched_in_another(
    make_store: MakeStore,
) -> None:
    a, b = make_store(), make_store()
    job = a.create(4, {"steps": 4}, params={"size": 32})

    async def run() -> tuple[list[tuple[int, str]], JobStatus]:
        seen: list[tuple[int, str]] = []

        async def follower() -> None:
            async for event in b.follow(b.get(job.id)):
                seen.append((event.id, event.type))

        following = asyncio.create_task(follower())
        waiting = b.get(job.id)
        waited = asyncio.create_task(b.wait(waiting))
        await asyncio.sleep(0.05)
        a.start(job)
        a.advance(job, 2, LOSSES, "data:,")
        seen_by_b = b.get(job.id)
        assert seen_by_b.status is JobStatus.RUNNING and seen_by_b.step == 2
        assert seen_by_b.losses == LOSSES and seen_by_b.document().fraction == 0.5
        assert not b.drives(seen_by_b) and a.drives(job)
        await asyncio.sleep(0.05)
        assert not waited.done()
        await a.write_result(job, b"the image", "png")
        a.succeed(job, media_type="image/png", step=4, losses=LOSSES, seconds=1.0)
        await asyncio.wait_for(asyncio.gather(following, waited), 5)
        assert await b.read_result(waiting) == b"the image"
        return seen, waiting.status

    seen, status_after_wait = asyncio.run(run())
    assert seen == [(1, "progress"), (2, "progress"), (3, "preview"), (4, "succeeded")]
    assert status_after_wait is JobStatus.SUCCEEDED  # `wait` brought B's copy up to date
    assert b.get(job.id).document() == job.document()
    assert [j.id for j in b.jobs()] == [job.id] and len(b) == 1 and b.active == 0


def test_an_event_stream_resumes_after_the_last_event_id_in_another_process(
    make_store: MakeStore,
) -> None:
    a, b = make_store(), make_store()
    job = a.create(9, {})
    a.start(job)
    for step in range(1, 6):
        a.advance(job, step, LOSSES)
    a.cancelled(job)

    async def events_after(after: int) -> list[tuple[int, str]]:
        return [(e.id, e.type) async for e in b.follow(b.get(job.id), after)]

    assert asyncio.run(events_after(4)) == [(5, "progress"), (6, "progress"), (7, "canceled")]
    assert asyncio.run(events_after(7)) == []


def test_a_cancel_asked_in_one_process_reaches_the_process_that_runs_the_job(
    make_store: MakeStore,
) -> None:
    a, b = make_store(), make_store()
    cancelled_on: list[str] = []

    def cancel_locally(job: Any) -> None:  # as StylizeService.cancel does, in A
        cancelled_on.append(threading.current_thread().name)
        a.cancelled(job)

    a.on_cancel_request(cancel_locally)

    async def run() -> tuple[JobStatus, float]:
        job = a.create(100, {})  # on A's loop: A's cancels come to this loop
        a.start(job)
        seen_by_b = b.get(job.id)
        assert not b.drives(seen_by_b)
        started = time.monotonic()
        b.request_cancel(seen_by_b)
        await b.wait(seen_by_b, timeout_s=5)
        assert job.status is JobStatus.CANCELED  # A's own object
        return seen_by_b.status, time.monotonic() - started

    status, seconds = asyncio.run(run())
    assert status is JobStatus.CANCELED and seconds < 2
    assert cancelled_on == ["MainThread"]  # on A's event loop, not the listener thread


def test_a_follower_of_a_job_given_back_goes_on_when_another_process_runs_it(
    make_store: MakeStore,
) -> None:
    a, b = make_store(), make_store()
    job = a.create(2, {})
    a.start(job)
    a.requeue(job)  # 1: progress, 2: interrupted

    async def run() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []

        async def follower() -> None:  # reconnected after the `interrupted` event
            async for event in b.follow(b.get(job.id), after=2):
                seen.append((event.id, event.type))

        following = asyncio.create_task(follower())
        await asyncio.sleep(0.05)
        assert not following.done()
        (claimed,) = b.claim_unfinished()
        b.start(claimed)
        b.cancelled(claimed)
        await asyncio.wait_for(following, 5)
        return seen

    assert asyncio.run(run()) == [(3, "progress"), (4, "canceled")]


def test_the_limits_count_every_process_atomically(make_store: MakeStore) -> None:
    stores = [make_store(max_active=5, max_jobs=50) for _ in range(3)]

    def create_many(store: RedisJobStore) -> int:
        admitted = 0
        for _ in range(10):
            try:
                store.create(1, {})
                admitted += 1
            except JobLimit:
                pass
        return admitted

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        admitted = list(pool.map(create_many, stores))
    assert sum(admitted) == 5 and stores[0].active == 5


def test_a_result_expires_with_the_job_ttl_in_redis_itself(
    make_store: MakeStore, redis_url: str,
) -> None:
    store = make_store(ttl_s=0.5)
    job = store.create(1, {})
    store.start(job)
    store.save_inputs(job, b"content", [b"style"])
    finish(store, job, b"image")
    prefix = f"atelier:job:{job.id}"
    with redis.Redis.from_url(redis_url) as client:
        assert not client.exists(f"{prefix}:inputs")  # uploads go when the job ends
        for key in (prefix, f"{prefix}:events", f"{prefix}:result"):
            assert 0 < client.pttl(key) <= 500, key
        time.sleep(0.6)
        # Gone without any purge by the store: Redis expired them.
        assert client.exists(prefix, f"{prefix}:events", f"{prefix}:result") == 0
    with pytest.raises(JobNotFound):
        asyncio.run(store.read_result(job))


def test_closing_a_process_leaves_its_jobs_to_the_others(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    done, unfinished = a.create(1, {}), a.create(1, {})
    finish(a, done, b"image")
    a.start(unfinished)
    assert b.claim_unfinished() == []  # A is alive and drives it
    a.close()
    assert unfinished.cancel.is_set()
    (claimed,) = b.claim_unfinished()
    assert claimed.id == unfinished.id and b.drives(claimed)
    assert b.get(done.id).status is JobStatus.SUCCEEDED


def test_a_cancel_of_a_job_whose_process_died_is_done_by_the_asking_process(
    make_store: MakeStore,
) -> None:
    a, b = make_store(), make_store()
    job = a.create(1, {})
    a.close()  # as dead as it gets for the store: its heartbeat is gone
    b.request_cancel(b.get(job.id))
    assert b.get(job.id).status is JobStatus.CANCELED


# A server process that creates jobs, then is killed: nothing of it runs again.
_DYING_PROCESS = """
import sys, time
from app.services.redisjobs import RedisJobStore
store = RedisJobStore(sys.argv[1], max_active=8, max_jobs=16, ttl_s=60, driver_ttl_s=0.5)
jobs = [store.create(1, {}) for _ in range(4)]
store.start(jobs[0])
print(" ".join(j.id for j in jobs), flush=True)
time.sleep(60)
"""


def test_the_jobs_of_a_dead_process_are_claimed_once_and_a_live_ones_never(
    make_store: MakeStore, redis_url: str,
) -> None:
    live = make_store()
    kept = live.create(1, {})
    dying = subprocess.Popen([sys.executable, "-c", _DYING_PROCESS, redis_url],
                             cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    assert dying.stdout is not None
    orphans = dying.stdout.readline().split()
    assert len(orphans) == 4
    claimers = [make_store(), make_store()]
    assert all(c.claim_unfinished() == [] for c in claimers)  # its driver is alive
    os.kill(dying.pid, signal.SIGKILL)
    dying.wait(10)
    time.sleep(0.7)  # its heartbeat (0.5 s) expires

    start = threading.Barrier(2)

    def claim(store: RedisJobStore) -> list[str]:
        start.wait()
        return [j.id for j in store.claim_unfinished()]

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        claimed = list(pool.map(claim, claimers))
    assert sorted(claimed[0] + claimed[1]) == sorted(orphans)  # each once, by one of them
    assert kept.id not in claimed[0] + claimed[1] and live.drives(kept)
    assert all(c.claim_unfinished() == [] for c in claimers)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill."""
    require()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


def test_killing_and_restarting_redis_loses_nothing_acknowledged(
    own_redis: RedisServer,
) -> None:
    """AOF with `appendfsync always` (tests/redisserver.py): a write Redis acknowledged is
    on disk, so SIGKILL and a start on the same folder bring it back."""
    before = RedisJobStore(own_redis.url, max_active=8, max_jobs=16, ttl_s=600)
    done, running, queued = (before.create(4, {"n": i}) for i in range(3))
    before.start(done)
    before.advance(done, 2, LOSSES, "data:,")
    finish(before, done, b"the image")
    before.save_inputs(running, b"content", [b"style"])
    before.start(running)
    before.advance(running, 3, LOSSES)
    before.save_inputs(queued, b"queued content", [b"s0", b"s1"])
    expected = {j.id: j.document() for j in (done, running, queued)}
    before.requeue(running)  # the last acknowledged write before the kill

    own_redis.kill()
    own_redis.start()
    after = RedisJobStore(own_redis.url, max_active=8, max_jobs=16, ttl_s=600)
    try:
        assert {j.id: j.document() for j in after.jobs()} == {
            **expected, running.id: running.document()}
        assert asyncio.run(after.read_result(done)) == b"the image"

        async def events(job_id: str) -> list[str]:
            return [e.type async for e in after.follow(after.get(job_id))]

        assert asyncio.run(events(done.id)) == ["progress", "progress", "preview",
                                                 "succeeded"]
        assert asyncio.run(events(running.id)) == ["progress", "progress", "interrupted"]
        assert after.load_inputs(running) == (b"content", [b"style"])
        assert after.load_inputs(queued) == (b"queued content", [b"s0", b"s1"])
        assert after.active == 2 and len(after) == 3
        before.close()  # its heartbeat goes: its queued job is free to claim
        claimed = after.claim_unfinished()
        assert [j.id for j in claimed] == [running.id, queued.id]
    finally:
        after.close()
