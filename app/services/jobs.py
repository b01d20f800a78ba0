"""Long-running jobs: status, progress events for SSE, results on disk, TTL, bounds.

All methods run on the event loop thread; workers hand updates over with
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.services.errors import ServiceError


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class JobLimit(ServiceError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass
class JobEvent:
    id: int
    type: str  # progress | preview | succeeded | failed | canceled
    data: dict[str, Any]


@dataclass(eq=False)
class Job:
    id: str
    steps: int
    options: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    step: int = 0
    losses: dict[str, float] | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    result_path: Path | None = None
    media_type: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    events: deque[JobEvent] = field(default_factory=lambda: deque(maxlen=512))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _next_event: int = 1

    @property
    def fraction(self) -> float:
        return self.step / self.steps if self.steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.status is not JobStatus.RUNNING or not self.started_at or not self.step:
            return None
        elapsed = time.time() - self.started_at
        return round(elapsed / self.step * (self.steps - self.step), 2)

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status.value,
            "step": self.step,
            "steps": self.steps,
            "fraction": round(self.fraction, 4),
            "losses": self.losses,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "eta_seconds": self.eta_seconds,
            "error": self.error,
            "options": self.options,
            "links": {
                "self": f"/jobs/{self.id}",
                "events": f"/jobs/{self.id}/events",
                "result": f"/jobs/{self.id}/result",
            },
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


class JobStore:
    def __init__(
        self, *, max_active: int, max_jobs: int, ttl_s: float, results_dir: Path,
        retry_after_s: int = 5,
    ) -> None:
        self.max_active = max_active
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.results_dir = results_dir
        self.retry_after_s = retry_after_s
        self._jobs: dict[str, Job] = {}
        # Results of an earlier process belong to jobs this one never knew.
        shutil.rmtree(results_dir, ignore_errors=True)
        results_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def active(self) -> int:
        return sum(not j.status.terminal for j in self._jobs.values())

    def create(self, steps: int, options: dict[str, Any]) -> Job:
        self.purge_expired()
        if self.active >= self.max_active:
            raise JobLimit(f"{self.max_active} jobs are already queued or running",
                           self.retry_after_s)
        while len(self._jobs) >= self.max_jobs:
            finished = [j for j in self._jobs.values() if j.status.terminal]
            if not finished:
                raise JobLimit(f"the job store is full ({self.max_jobs} jobs)",
                               self.retry_after_s)
            self._remove(min(finished, key=lambda j: j.finished_at or 0))
        job = Job(id=secrets.token_urlsafe(12), steps=steps, options=options)
        self._jobs[job.id] = job
        return job

    def get(self, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and self._expired(job, time.time()):
            self._remove(job)
            return None
        return job

    def discard(self, job: Job) -> None:
        self._remove(job)

    def result_path(self, job: Job, extension: str) -> Path:
        return self.results_dir / f"{job.id}.{extension}"

    def publish(self, job: Job, kind: str, data: dict[str, Any]) -> None:
        job.events.append(JobEvent(job._next_event, kind, data))
        job._next_event += 1
        changed, job.changed = job.changed, asyncio.Event()
        changed.set()

    async def follow(
        self, job: Job, after: int = 0, keepalive_s: float = 15.0
    ) -> AsyncIterator[JobEvent | None]:
        """Events with id > `after`, then new ones as they come, until the final one.

        Yields None when nothing happened for `keepalive_s` (time for a keep-alive comment).
        """
        last = after
        while True:
            changed = job.changed
            for event in list(job.events):
                if event.id > last:
                    last = event.id
                    yield event
                    if event.type in ("succeeded", "failed", "canceled"):
                        return
            if job.status.terminal and not any(e.id > last for e in job.events):
                return
            try:
                await asyncio.wait_for(changed.wait(), keepalive_s)
            except TimeoutError:
                yield None

    async def wait(self, job: Job, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not job.status.terminal:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.changed.wait(), remaining)

    def purge_expired(self) -> int:
        now = time.time()
        expired = [j for j in self._jobs.values() if self._expired(j, now)]
        for job in expired:
            self._remove(job)
        return len(expired)

    def _expired(self, job: Job, now: float) -> bool:
        return job.finished_at is not None and now - job.finished_at > self.ttl_s

    def _remove(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        if job.result_path is not None:
            job.result_path.unlink(missing_ok=True)

    def close(self) -> None:
        for job in list(self._jobs.values()):
            job.cancel.set()
            self._remove(job)
