"""The job stores: state transitions, the events they publish, following, TTL and bounds.

Every test here runs against both stores: the embedded one and the one on Redis (a real
redis-server); tests/test_redis_jobs.py has what only a shared store does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.errors import AtelierError
from app.services.jobs import (
    EmbeddedJobStore,
    Job,
    JobDocument,
    JobEvent,
    JobLimit,
    JobNotFound,
    JobProgress,
    JobStatus,
    JobStore,
    Losses,
    OwnerJobLimit,
)
from app.services.redisjobs import RedisJobStore

LOSSES = Losses(content=1.0, style=2.0, tv=0.5, total=3.5)

MakeStore = Callable[..., JobStore]


class Boom(AtelierError):
    status = 422
    slug = "boom"
    title = "Boom"


@pytest.fixture(params=["embedded", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStore]:
    """Stores of one kind, with the test's limits; closed after the test."""
    stores: list[JobStore] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(**overrides: Any) -> JobStore:
        limits: dict[str, Any] = {"max_active": 4, "max_jobs": 8, "ttl_s": 60.0,
                                  "retry_after_s": 9} | overrides
        store: JobStore = (RedisJobStore(url, **limits) if url is not None
                           else EmbeddedJobStore(results_dir=tmp_path / "results",
                                                 inputs_dir=tmp_path / "inputs", **limits))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def finish(store: JobStore, job: Job, content: bytes = b"image") -> None:
    asyncio.run(store.write_result(job, content, "png"))
    store.start(job)
    store.succeed(job, media_type="image/png", step=job.steps, losses=LOSSES, seconds=0.5)


def result(store: JobStore, job: Job) -> bytes:
    return asyncio.run(store.read_result(job))


def collect(store: JobStore, job: Job, after: int = 0) -> list[JobEvent]:
    async def run() -> list[JobEvent]:
        return [event async for event in store.follow(job, after)]

    return asyncio.run(asyncio.wait_for(run(), 5))


def kinds(store: JobStore, job: Job) -> list[str]:
    return [e.type for e in collect(store, job)]


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_a_new_job_is_queued_without_events(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(10, {"steps": 10})
    other = store.create(10, {})
    assert job.id != other.id and len(job.id) >= 16
    assert job.status is JobStatus.QUEUED and job.next_event == 1
    assert store.get(job.id) is job and len(store) == 2 and store.active == 2
    document = job.document()
    assert isinstance(document, JobDocument)
    assert document.status == "queued" and document.step == 0 and document.fraction == 0
    assert document.options == {"steps": 10} and document.links.events.endswith("/events")


def test_transitions_publish_events_in_order_with_increasing_ids(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(4, {})
    store.start(job)
    store.start(job)  # already running: nothing
    store.advance(job, 2, LOSSES)
    store.advance(job, 4, LOSSES, "data:image/jpeg;base64,AAAA")
    finish(store, job, b"the image")
    events = collect(store, job)
    assert [e.type for e in events] == ["progress", "progress", "progress", "preview",
                                        "succeeded"]
    assert [e.id for e in events] == [1, 2, 3, 4, 5]
    started, halfway, *_ = events
    assert isinstance(started.data, JobProgress) and started.data.status == "running"
    assert started.data.step == 0
    assert isinstance(halfway.data, JobProgress)
    assert halfway.data.step == 2 and halfway.data.fraction == 0.5
    assert halfway.data.losses == LOSSES
    assert events[3].data == {"step": 4, "data_url": "data:image/jpeg;base64,AAAA"}
    final = events[4].data
    assert isinstance(final, JobDocument)
    assert final.status == "succeeded" and final.fraction == 1.0 and final.seconds == 0.5
    assert final.finished_at and final.started_at and final.error is None
    assert final == store.get(job.id).document() == job.document()
    assert job.media_type == "image/png" and result(store, job) == b"the image"
    assert store.active == 0


def test_nothing_changes_a_job_after_its_final_state(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(4, {})
    store.start(job)
    store.cancelled(job)
    events, finished_at = collect(store, job), job.finished_at
    store.advance(job, 3, LOSSES, "data:image/jpeg;base64,AAAA")
    store.succeed(job, media_type="image/png", step=4, losses=LOSSES, seconds=1.0)
    store.fail(job, Boom("late"))
    store.cancelled(job)
    store.start(job)
    for seen in (job, store.get(job.id)):
        assert seen.status is JobStatus.CANCELED and seen.step == 0 and seen.error is None
        assert seen.media_type is None and seen.finished_at == finished_at
    assert collect(store, job) == events and kinds(store, job) == ["progress", "canceled"]


def test_a_failure_records_the_problem_of_its_error(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(4, {})
    store.fail(job, Boom("it broke"))  # straight from queued
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.model_dump() == {"type": "urn:atelier:problem:boom", "title": "Boom",
                                      "status": 422, "detail": "it broke",
                                      "retry_after_s": None}
    (event,) = collect(store, job)
    assert event.type == "failed" and isinstance(event.data, JobDocument)
    assert event.data.error == job.error and event.data.started_at is None


def test_follow_yields_everything_then_ends_at_the_final_event(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(4, {})
    store.start(job)
    for step in (1, 2, 3):
        store.advance(job, step, LOSSES)
    finish(store, job)
    assert [(e.id, e.type) for e in collect(store, job)] == [
        (1, "progress"), (2, "progress"), (3, "progress"), (4, "progress"), (5, "succeeded")]


def test_follow_resumes_after_an_id(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(4, {})
    store.start(job)
    store.advance(job, 2, LOSSES, "data:,")
    store.cancelled(job)
    assert [e.id for e in collect(store, job, after=2)] == [3, 4]
    assert [e.type for e in collect(store, job, after=3)] == ["canceled"]
    assert collect(store, job, after=4) == []  # nothing after the final event: ends at once
    assert collect(store, job, after=99) == []


def test_follow_waits_for_new_events_and_ends_with_the_final_one(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(3, {})

    async def run() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []

        async def follower() -> None:
            async for event in store.follow(job):
                seen.append((event.id, event.type))

        task = asyncio.create_task(follower())
        await asyncio.sleep(0.05)
        assert seen == [] and not task.done()
        store.start(job)
        await until(lambda: seen == [(1, "progress")])
        store.advance(job, 1, LOSSES)
        store.advance(job, 2, LOSSES)  # two at once: both come, in order
        await until(lambda: len(seen) == 3)
        store.fail(job, Boom("x"))
        await asyncio.wait_for(task, 1)
        store.advance(job, 3, LOSSES)  # ignored: the job has finished
        return seen

    assert asyncio.run(run()) == [(1, "progress"), (2, "progress"), (3, "progress"),
                                  (4, "failed")]


def test_wait_returns_at_the_final_state_or_the_timeout(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(3, {})

    async def run() -> tuple[float, JobStatus, JobStatus]:
        t0 = time.monotonic()
        await store.wait(job, timeout_s=0.05)
        timed_out = time.monotonic() - t0
        status_then = job.status
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, store.start, job)
        loop.call_later(0.04, store.cancelled, job)
        await asyncio.wait_for(store.wait(job), 2)
        return timed_out, status_then, job.status

    timed_out, status_then, status_now = asyncio.run(run())
    assert 0.04 <= timed_out < 1 and status_then is JobStatus.QUEUED
    assert status_now is JobStatus.CANCELED


def test_an_expired_job_is_gone_with_its_result(make_store: MakeStore) -> None:
    store = make_store(ttl_s=0.5)
    old, fresh, running = store.create(1, {}), store.create(1, {}), store.create(1, {})
    finish(store, old, b"old")
    store.start(running)
    assert store.purge_expired() == 0
    time.sleep(0.6)  # `old` finished longer ago than the TTL; unfinished jobs never expire
    finish(store, fresh, b"fresh")
    assert store.purge_expired() == 1
    with pytest.raises(JobNotFound):
        store.get(old.id)
    with pytest.raises(JobNotFound):
        result(store, old)
    assert result(store, fresh) == b"fresh"
    assert store.get(fresh.id).document() == fresh.document()
    assert store.get(running.id) is running and len(store) == 2


def test_get_expires_a_job_without_waiting_for_the_purge(make_store: MakeStore) -> None:
    store = make_store(ttl_s=0.3)
    job = store.create(1, {})
    finish(store, job)
    time.sleep(0.4)
    with pytest.raises(JobNotFound):
        store.get(job.id)
    with pytest.raises(JobNotFound):
        result(store, job)
    assert len(store) == 0


def test_max_active_jobs_are_a_job_limit_with_retry_after(make_store: MakeStore) -> None:
    store = make_store(max_active=2)
    first, _second = store.create(1, {}), store.create(1, {})
    with pytest.raises(JobLimit) as refused:
        store.create(1, {})
    assert refused.value.status == 503 and refused.value.retry_after_s == 9
    assert refused.value.type == "urn:atelier:problem:job-limit"
    assert "2 jobs" in refused.value.detail
    store.cancelled(first)
    store.create(1, {})  # a finished job no longer counts
    assert store.active == 2 and len(store) == 3


def test_a_full_store_evicts_the_oldest_finished_job(make_store: MakeStore) -> None:
    store = make_store(max_active=5, max_jobs=3)
    a, b, c = store.create(1, {}), store.create(1, {}), store.create(1, {})
    finish(store, b, b"b")  # b finished first
    finish(store, a, b"a")
    d = store.create(1, {})
    with pytest.raises(JobNotFound):
        store.get(b.id)
    with pytest.raises(JobNotFound):
        result(store, b)
    assert result(store, a) == b"a"
    assert [store.get(j.id).id for j in (a, c, d)] == [a.id, c.id, d.id] and len(store) == 3
    assert [j.id for j in store.jobs()] == [a.id, c.id, d.id]  # oldest first
    assert [j.id for j in store.unfinished()] == [c.id, d.id]


def test_the_limit_per_owner_counts_only_that_owners_unfinished_jobs(
    make_store: MakeStore,
) -> None:
    store = make_store(max_active=5, max_active_per_owner=2)
    first = store.create(1, {}, owner="alice")
    store.create(1, {}, owner="alice")
    with pytest.raises(OwnerJobLimit) as refused:
        store.create(1, {}, owner="alice")
    assert refused.value.status == 429 and refused.value.retry_after_s == 9
    store.create(1, {}, owner="bob")
    store.create(1, {})  # no owner: no per-owner limit
    store.cancelled(first)
    store.create(1, {}, owner="alice")
    with pytest.raises(JobNotFound):
        store.get(first.id, owner="bob")  # someone else's job is not found
    assert store.get(first.id, owner="alice").id == first.id


def test_a_store_full_of_unfinished_jobs_refuses(make_store: MakeStore) -> None:
    store = make_store(max_active=5, max_jobs=2)
    jobs = [store.create(1, {}), store.create(1, {})]
    with pytest.raises(JobLimit) as refused:
        store.create(1, {})
    assert refused.value.retry_after_s == 9 and "full" in refused.value.detail
    assert [store.get(j.id) for j in jobs] == jobs


def test_an_unknown_id_is_job_not_found(make_store: MakeStore) -> None:
    store = make_store()
    with pytest.raises(JobNotFound) as missing:
        store.get("no-such-job")
    assert missing.value.status == 404
    assert missing.value.type == "urn:atelier:problem:unknown-job"
    assert "no-such-job" in missing.value.detail


def test_a_discarded_job_is_gone(make_store: MakeStore) -> None:
    store = make_store()
    job = store.create(1, {})
    store.discard(job)
    with pytest.raises(JobNotFound):
        store.get(job.id)


def test_uploads_are_kept_until_the_job_ends(make_store: MakeStore) -> None:
    store = make_store()
    job, other = store.create(1, {}), store.create(1, {})
    store.save_inputs(job, b"content", [b"style 0", b"style 1"])
    assert store.load_inputs(job) == (b"content", [b"style 0", b"style 1"])
    assert store.load_inputs(other) is None
    store.start(job)
    store.cancelled(job)
    assert store.load_inputs(job) is None


def test_a_job_given_back_is_claimed_once(make_store: MakeStore) -> None:
    store = make_store()
    given_back, kept = store.create(1, {}), store.create(1, {})
    store.start(given_back)
    store.advance(given_back, 1, LOSSES)
    store.requeue(given_back)
    assert [e.type for e in collect(store, given_back)][-1] == "interrupted"
    assert store.get(given_back.id).status is JobStatus.QUEUED
    assert not store.drives(given_back) and store.drives(kept)
    assert store.driving() == [kept] and len(store.unfinished()) == 2
    (claimed,) = store.claim_unfinished()
    assert claimed.id == given_back.id and claimed.status is JobStatus.QUEUED
    assert store.drives(claimed) and store.claim_unfinished() == []
    store.start(claimed)  # runs again: its events go on after the `interrupted` one
    store.cancelled(claimed)
    assert [(e.id, e.type) for e in collect(store, claimed, after=3)] == [
        (4, "progress"), (5, "canceled")]


def test_close_cancels_every_job_it_drives(make_store: MakeStore) -> None:
    store = make_store()
    running, done = store.create(1, {}), store.create(1, {})
    finish(store, done)
    store.start(running)
    store.close()
    assert running.cancel.is_set()


def test_an_embedded_store_without_persistence_drops_its_jobs_on_close(tmp_path: Path) -> None:
    store = EmbeddedJobStore(max_active=4, max_jobs=8, ttl_s=60, results_dir=tmp_path)
    done = store.create(1, {})
    finish(store, done)
    assert done.result_path is not None and done.result_path.exists()
    store.close()
    assert done.cancel.is_set() and len(store) == 0 and not done.result_path.exists()
