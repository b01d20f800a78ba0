"""`JobStore`: state transitions, the events they publish, following, TTL and bounds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from app.errors import AtelierError
from app.services.jobs import (
    Job,
    JobDocument,
    JobEvent,
    JobLimit,
    JobNotFound,
    JobProgress,
    JobStatus,
    JobStore,
    Losses,
)

LOSSES = Losses(content=1.0, style=2.0, tv=0.5, total=3.5)


class Boom(AtelierError):
    status = 422
    slug = "boom"
    title = "Boom"


def make_store(tmp_path: Path, **overrides: Any) -> JobStore:
    kwargs: dict[str, Any] = {"max_active": 4, "max_jobs": 8, "ttl_s": 60.0,
                              "results_dir": tmp_path / "results", "retry_after_s": 9}
    return JobStore(**(kwargs | overrides))


def finish(store: JobStore, job: Job, content: bytes = b"image") -> Path:
    path = store.result_path(job, "png")
    path.write_bytes(content)
    store.start(job)
    store.succeed(job, path=path, media_type="image/png", step=job.steps, losses=LOSSES,
                  seconds=0.5)
    return path


def kinds(job: Job) -> list[str]:
    return [e.type for e in job.events]


def collect(store: JobStore, job: Job, after: int = 0) -> list[JobEvent]:
    async def run() -> list[JobEvent]:
        return [event async for event in store.follow(job, after)]

    return asyncio.run(asyncio.wait_for(run(), 5))


def test_a_new_job_is_queued_without_events(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(10, {"steps": 10})
    other = store.create(10, {})
    assert job.id != other.id and len(job.id) >= 16
    assert job.status is JobStatus.QUEUED and not job.events
    assert store.get(job.id) is job and len(store) == 2 and store.active == 2
    document = job.document()
    assert isinstance(document, JobDocument)
    assert document.status == "queued" and document.step == 0 and document.fraction == 0
    assert document.options == {"steps": 10} and document.links.events.endswith("/events")


def test_transitions_publish_events_in_order_with_increasing_ids(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(4, {})
    store.start(job)
    store.start(job)  # already running: nothing
    store.advance(job, 2, LOSSES)
    store.advance(job, 4, LOSSES, "data:image/jpeg;base64,AAAA")
    path = finish(store, job)
    assert kinds(job) == ["progress", "progress", "progress", "preview", "succeeded"]
    assert [e.id for e in job.events] == [1, 2, 3, 4, 5]
    started, halfway, *_ = job.events
    assert isinstance(started.data, JobProgress) and started.data.status == "running"
    assert started.data.step == 0
    assert isinstance(halfway.data, JobProgress)
    assert halfway.data.step == 2 and halfway.data.fraction == 0.5
    assert halfway.data.losses == LOSSES
    assert job.events[3].data == {"step": 4, "data_url": "data:image/jpeg;base64,AAAA"}
    final = job.events[4].data
    assert isinstance(final, JobDocument)
    assert final.status == "succeeded" and final.fraction == 1.0 and final.seconds == 0.5
    assert final.finished_at and final.started_at and final.error is None
    assert job.result_path == path and job.media_type == "image/png"
    assert store.active == 0


def test_nothing_changes_a_job_after_its_final_state(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(4, {})
    store.start(job)
    store.cancelled(job)
    events, finished_at = list(job.events), job.finished_at
    store.advance(job, 3, LOSSES, "data:image/jpeg;base64,AAAA")
    store.succeed(job, path=tmp_path / "x.png", media_type="image/png", step=4,
                  losses=LOSSES, seconds=1.0)
    store.fail(job, Boom("late"))
    store.cancelled(job)
    store.start(job)
    assert job.status is JobStatus.CANCELED and job.step == 0 and job.error is None
    assert job.result_path is None and job.finished_at == finished_at
    assert list(job.events) == events and kinds(job) == ["progress", "canceled"]


def test_a_failure_records_the_problem_of_its_error(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(4, {})
    store.fail(job, Boom("it broke"))  # straight from queued
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.model_dump() == {"type": "urn:atelier:problem:boom", "title": "Boom",
                                      "status": 422, "detail": "it broke",
                                      "retry_after_s": None}
    (event,) = job.events
    assert event.type == "failed" and isinstance(event.data, JobDocument)
    assert event.data.error == job.error and event.data.started_at is None


def test_follow_yields_everything_then_ends_at_the_final_event(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(4, {})
    store.start(job)
    for step in (1, 2, 3):
        store.advance(job, step, LOSSES)
    finish(store, job)
    assert [(e.id, e.type) for e in collect(store, job)] == [
        (1, "progress"), (2, "progress"), (3, "progress"), (4, "progress"), (5, "succeeded")]


def test_follow_resumes_after_an_id(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(4, {})
    store.start(job)
    store.advance(job, 2, LOSSES, "data:,")
    store.cancelled(job)
    assert [e.id for e in collect(store, job, after=2)] == [3, 4]
    assert [e.type for e in collect(store, job, after=3)] == ["canceled"]
    assert collect(store, job, after=4) == []  # nothing after the final event: ends at once
    assert collect(store, job, after=99) == []


def test_follow_waits_for_new_events_and_ends_with_the_final_one(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(3, {})

    async def run() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []

        async def follower() -> None:
            async for event in store.follow(job):
                seen.append((event.id, event.type))

        task = asyncio.create_task(follower())
        await asyncio.sleep(0.01)
        assert seen == [] and not task.done()
        store.start(job)
        await asyncio.sleep(0.01)
        assert seen == [(1, "progress")]
        store.advance(job, 1, LOSSES)
        store.advance(job, 2, LOSSES)  # two at once: both come, in order
        await asyncio.sleep(0.01)
        store.fail(job, Boom("x"))
        await asyncio.wait_for(task, 1)
        store.advance(job, 3, LOSSES)  # ignored: the job has finished
        return seen

    assert asyncio.run(run()) == [(1, "progress"), (2, "progress"), (3, "progress"),
                                  (4, "failed")]


def test_wait_returns_at_the_final_state_or_the_timeout(tmp_path: Path) -> None:
    store = make_store(tmp_path)
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


def test_an_expired_job_is_gone_with_its_result(tmp_path: Path) -> None:
    store = make_store(tmp_path, ttl_s=30)
    old, fresh, running = store.create(1, {}), store.create(1, {}), store.create(1, {})
    old_path, fresh_path = finish(store, old), finish(store, fresh)
    store.start(running)
    assert store.purge_expired() == 0
    assert old.finished_at is not None
    old.finished_at -= 31  # finished longer ago than the TTL
    running.created_at -= 1000  # unfinished jobs never expire
    assert store.purge_expired() == 1
    assert not old_path.exists() and fresh_path.exists()
    with pytest.raises(JobNotFound):
        store.get(old.id)
    assert store.get(fresh.id) is fresh and store.get(running.id) is running


def test_get_expires_a_job_without_waiting_for_the_purge(tmp_path: Path) -> None:
    store = make_store(tmp_path, ttl_s=30)
    job = store.create(1, {})
    path = finish(store, job)
    assert job.finished_at is not None
    job.finished_at -= 31
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert not path.exists() and len(store) == 0


def test_max_active_jobs_are_a_job_limit_with_retry_after(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_active=2)
    first, _second = store.create(1, {}), store.create(1, {})
    with pytest.raises(JobLimit) as refused:
        store.create(1, {})
    assert refused.value.status == 503 and refused.value.retry_after_s == 9
    assert refused.value.type == "urn:atelier:problem:job-limit"
    assert "2 jobs" in refused.value.detail
    store.cancelled(first)
    store.create(1, {})  # a finished job no longer counts
    assert store.active == 2 and len(store) == 3


def test_a_full_store_evicts_the_oldest_finished_job(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_active=5, max_jobs=3)
    a, b, c = store.create(1, {}), store.create(1, {}), store.create(1, {})
    b_path = finish(store, b)
    a_path = finish(store, a)
    assert a.finished_at is not None and b.finished_at is not None
    b.finished_at -= 1  # b finished first
    d = store.create(1, {})
    with pytest.raises(JobNotFound):
        store.get(b.id)
    assert not b_path.exists() and a_path.exists()
    assert {store.get(j.id) for j in (a, c, d)} == {a, c, d} and len(store) == 3


def test_a_store_full_of_unfinished_jobs_refuses(tmp_path: Path) -> None:
    store = make_store(tmp_path, max_active=5, max_jobs=2)
    jobs = [store.create(1, {}), store.create(1, {})]
    with pytest.raises(JobLimit) as refused:
        store.create(1, {})
    assert refused.value.retry_after_s == 9 and "full" in refused.value.detail
    assert [store.get(j.id) for j in jobs] == jobs


def test_an_unknown_id_is_job_not_found(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(JobNotFound) as missing:
        store.get("no-such-job")
    assert missing.value.status == 404
    assert missing.value.type == "urn:atelier:problem:unknown-job"
    assert "no-such-job" in missing.value.detail


def test_a_discarded_job_is_gone(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    job = store.create(1, {})
    store.discard(job)
    with pytest.raises(JobNotFound):
        store.get(job.id)


def test_close_cancels_every_job_and_an_in_memory_store_drops_them(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    running, done = store.create(1, {}), store.create(1, {})
    path = finish(store, done)
    store.start(running)
    store.close()
    assert running.cancel.is_set() and done.cancel.is_set()
    assert len(store) == 0 and not path.exists()
