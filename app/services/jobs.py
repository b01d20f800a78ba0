"""Long-running jobs: one document model, the state transitions, progress events, results,
TTL and bounds; `JobStore` is their interface, with two implementations: `EmbeddedJobStore`
(one process: memory, written through to SQLite) and `RedisJobStore` (app/services/redisjobs.py:
shared by every server on one Redis). `open_job_store(settings)` picks one.

All methods run on the event loop thread (except `save_inputs`, which blocks); workers hand
updates over with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from app.errors import PROBLEM_TYPE_PREFIX, AtelierError
from app.services.jobdb import JobPersistence, JobRecord, SqliteJobs

if TYPE_CHECKING:
    from app.settings import Settings


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


# The last event a stream sends: a final status, or "interrupted" when the server stops
# with the job unfinished (it is re-queued; a client reconnects with Last-Event-ID).
INTERRUPTED = "interrupted"
FINAL_EVENTS = frozenset({*(s.value for s in JobStatus if s.terminal), INTERRUPTED})


class JobLimit(AtelierError):
    status = 503
    slug = "job-limit"
    title = "Too many jobs"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OwnerJobLimit(AtelierError):
    status = 429
    slug = "too-many-jobs-for-key"
    title = "Too many jobs for this key"

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(f"this API key already has {limit} jobs queued or running")
        self.retry_after_s = retry_after_s


class JobNotFound(AtelierError):
    status = 404
    slug = "unknown-job"
    title = "Unknown job"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} (it may have expired)")


class JobNotFinished(AtelierError):
    status = 409
    slug = "job-not-finished"
    title = "No result"

    def __init__(self, job: Job) -> None:
        super().__init__(f"job {job.id} is {job.status.value}")
        self.job_id, self.job_status = job.id, job.status

    def headers(self) -> dict[str, str]:
        return {"X-Job-Id": self.job_id}

    def extensions(self) -> dict[str, Any]:
        return {"job_status": self.job_status.value}


class Losses(BaseModel):
    content: float
    style: float
    tv: float
    total: float


class JobError(BaseModel):
    """Why a job failed: the problem document (RFC 9457) its result request answers with."""

    type: str = Field(..., examples=["urn:atelier:problem:diverged"])
    title: str = Field(..., examples=["Diverged"])
    status: int = Field(..., examples=[422])
    detail: str
    retry_after_s: int | None = Field(
        None, description="When retrying may succeed (transient failures), in seconds.")

    @classmethod
    def of(cls, error: AtelierError) -> JobError:
        return cls(type=error.type, title=error.title, status=error.status, detail=error.detail,
                   retry_after_s=error.retry_after_s)


class JobFailed(AtelierError):
    """Asking for the result of a failed job: answers with the job's own error."""

    def __init__(self, job: Job) -> None:
        assert job.error is not None
        super().__init__(job.error.detail)
        self.status, self.title = job.error.status, job.error.title
        self.retry_after_s = job.error.retry_after_s
        self.slug = job.error.type.removeprefix(PROBLEM_TYPE_PREFIX)
        self.document = job.document()

    def extensions(self) -> dict[str, Any]:
        return {"job": self.document.model_dump(mode="json")}

    def headers(self) -> dict[str, str]:
        return {"X-Job-Id": self.document.id}


class JobProgress(BaseModel):
    """Where a job stands: the data of every `progress` event."""

    status: JobStatus = Field(..., examples=["running"])
    step: int = Field(..., examples=[120])
    steps: int = Field(..., examples=[300])
    fraction: float = Field(..., examples=[0.4])
    losses: Losses | None = None
    eta_seconds: float | None = Field(None, description="Estimated seconds left while running.")


class JobLinks(BaseModel):
    self: str
    events: str
    result: str


class JobDocument(JobProgress):
    """A job, as `/jobs/{id}` answers and the final event of its stream carries."""

    id: str = Field(..., examples=["Zp3kq2vX0aY1b2c3"])
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    seconds: float | None = Field(None, description="Compute time of a succeeded job.")
    error: JobError | None = None
    options: dict[str, Any] = Field(..., description="The options the job runs with.")
    links: JobLinks


@dataclass
class JobEvent:
    id: int
    type: str  # progress | preview | succeeded | failed | canceled | interrupted
    data: BaseModel | dict[str, Any]


@dataclass(eq=False)
class Job:
    id: str
    steps: int
    options: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)  # what the caller asked for
    owner: str | None = None
    status: JobStatus = JobStatus.QUEUED
    step: int = 0
    losses: Losses | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    error: JobError | None = None
    result_path: Path | None = None
    media_type: str | None = None
    next_event: int = 1
    # Live state of this process only.
    cancel: threading.Event = field(default_factory=threading.Event)
    interrupted: bool = False
    events: deque[JobEvent] = field(default_factory=lambda: deque(maxlen=512))
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def eta_seconds(self) -> float | None:
        if self.status is not JobStatus.RUNNING or not self.started_at or not self.step:
            return None
        elapsed = time.time() - self.started_at
        return round(elapsed / self.step * (self.steps - self.step), 2)

    def progress(self) -> JobProgress:
        return JobProgress(
            status=self.status, step=self.step, steps=self.steps,
            fraction=round(self.step / self.steps if self.steps else 0.0, 4),
            losses=self.losses, eta_seconds=self.eta_seconds,
        )

    def document(self) -> JobDocument:
        return JobDocument(
            **self.progress().model_dump(),
            id=self.id,
            created_at=_iso(self.created_at),
            started_at=_iso(self.started_at),
            finished_at=_iso(self.finished_at),
            seconds=self.seconds,
            error=self.error,
            options=self.options,
            links=JobLinks(self=f"/jobs/{self.id}", events=f"/jobs/{self.id}/events",
                           result=f"/jobs/{self.id}/result"),
        )

    def record(self) -> JobRecord:
        return JobRecord(
            id=self.id, owner=self.owner, status=self.status.value, steps=self.steps,
            step=self.step, losses=self.losses.model_dump() if self.losses else None,
            created_at=self.created_at, started_at=self.started_at,
            finished_at=self.finished_at, seconds=self.seconds,
            error=self.error.model_dump() if self.error else None, options=self.options,
            params=self.params, result_path=str(self.result_path) if self.result_path else None,
            media_type=self.media_type, next_event=self.next_event,
        )

    @classmethod
    def from_record(cls, r: JobRecord) -> Job:
        return cls(
            id=r.id, steps=r.steps, options=r.options, params=r.params, owner=r.owner,
            status=JobStatus(r.status), step=r.step,
            losses=Losses(**r.losses) if r.losses else None, created_at=r.created_at,
            started_at=r.started_at, finished_at=r.finished_at, seconds=r.seconds,
            error=JobError(**r.error) if r.error else None,
            result_path=Path(r.result_path) if r.result_path else None,
            media_type=r.media_type, next_event=r.next_event,
        )


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{16}$")  # secrets.token_urlsafe(12)


class JobStore(ABC):
    """Jobs, their events, their uploads and their results: the interface both stores share,
    and the state transitions (the only code that changes a job's status).

    A job is *driven* by the process that runs it: the one that created it, or the one that
    claimed it (`claim_unfinished`) after its driver stopped. Only the driver changes a job;
    any process may read it, follow it and ask for it to be cancelled (`request_cancel`).
    """

    def __init__(self, *, max_active: int, max_jobs: int, ttl_s: float, retry_after_s: int,
                 max_active_per_owner: int | None) -> None:
        self.max_active = max_active
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self.max_active_per_owner = max_active_per_owner
        self._driving: dict[str, Job] = {}

    # ---- queries and admission --------------------------------------------------------

    @abstractmethod
    def __len__(self) -> int:
        """Jobs held, finished ones included."""

    @property
    @abstractmethod
    def active(self) -> int:
        """Jobs queued or running."""

    @abstractmethod
    def jobs(self) -> list[Job]:
        """Every job held, finished ones included, oldest first."""

    @abstractmethod
    def unfinished(self) -> list[Job]:
        """Jobs that are queued or running, whoever drives them, oldest first."""

    @abstractmethod
    def create(self, steps: int, options: dict[str, Any], *,
               params: dict[str, Any] | None = None, owner: str | None = None) -> Job:
        """A new queued job driven by this process, within the limits: JobLimit when
        `max_active` are unfinished or `max_jobs` are held and none has finished (else the
        oldest finished one goes), OwnerJobLimit past `max_active_per_owner`."""

    @abstractmethod
    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job, or JobNotFound (also once it has expired, or when it belongs to another
        owner: a job id is not a secret worth probing for)."""

    @abstractmethod
    def discard(self, job: Job) -> None:
        """Forget the job and everything stored with it."""

    @abstractmethod
    def purge_expired(self) -> int:
        """Remove the jobs finished longer than the TTL ago; returns how many."""

    def _too_many_active(self) -> JobLimit:
        return JobLimit(f"{self.max_active} jobs are already queued or running",
                        self.retry_after_s)

    def _too_many_for_owner(self) -> OwnerJobLimit:
        assert self.max_active_per_owner is not None
        return OwnerJobLimit(self.max_active_per_owner, self.retry_after_s)

    def _full(self) -> JobLimit:
        return JobLimit(f"the job store is full ({self.max_jobs} jobs)", self.retry_after_s)

    # ---- who drives what --------------------------------------------------------------

    def drives(self, job: Job) -> bool:
        return job.id in self._driving

    def driving(self) -> list[Job]:
        """The unfinished jobs this process drives, oldest first."""
        return sorted((j for j in self._driving.values() if not j.status.terminal),
                      key=lambda j: j.created_at)

    @abstractmethod
    def claim_unfinished(self) -> list[Job]:
        """The unfinished jobs no live process drives (left by a stopped or dead one), now
        driven by this one, oldest first; a job is claimed by one process only."""

    @abstractmethod
    def request_cancel(self, job: Job) -> None:
        """Ask the process that drives `job` to cancel it (see `on_cancel_request`)."""

    @abstractmethod
    def on_cancel_request(self, cancel: Callable[[Job], None]) -> None:
        """Register what cancels a job this process drives when another process asks."""

    # ---- uploads kept for re-queueing, and results --------------------------------------

    @abstractmethod
    def save_inputs(self, job: Job, content: bytes, styles: list[bytes]) -> None:
        """Keep the uploads until the job ends (blocking: call it off the event loop)."""

    @abstractmethod
    def load_inputs(self, job: Job) -> tuple[bytes, list[bytes]] | None:
        """(content, styles) as saved, or None."""

    @abstractmethod
    async def write_result(self, job: Job, data: bytes, extension: str) -> None:
        """Store the encoded result (before `succeed`); kept as long as the job."""

    @abstractmethod
    async def read_result(self, job: Job) -> bytes:
        """The stored result; JobNotFound once it has expired."""

    # ---- state transitions: the only code that changes a job's status ----------------

    def start(self, job: Job) -> None:
        if job.status is JobStatus.QUEUED:
            job.status = JobStatus.RUNNING
            job.started_at = time.time()
            self._publish(job, "progress", job.progress())

    def advance(self, job: Job, step: int, losses: Losses,
                preview_data_url: str | None = None) -> None:
        if job.status.terminal:
            return
        job.step, job.losses = step, losses
        self._publish(job, "progress", job.progress())
        if preview_data_url is not None:
            self._publish(job, "preview", {"step": step, "data_url": preview_data_url})

    def succeed(self, job: Job, *, media_type: str, step: int, losses: Losses,
                seconds: float) -> None:
        """After `write_result`."""
        if job.status.terminal:
            return
        job.media_type = media_type
        job.step, job.losses, job.seconds = step, losses, seconds
        self._finish(job, JobStatus.SUCCEEDED)

    def fail(self, job: Job, error: AtelierError) -> None:
        if not job.status.terminal:
            job.error = JobError.of(error)
            self._finish(job, JobStatus.FAILED)

    def cancelled(self, job: Job) -> None:
        if not job.status.terminal:
            self._finish(job, JobStatus.CANCELED)

    def requeue(self, job: Job) -> None:
        """Back to the queue, no longer driven by this process (a restart, or another
        process, runs it again): its followers' streams end here."""
        if job.status.terminal:
            return
        job.status, job.step, job.losses, job.started_at = JobStatus.QUEUED, 0, None, None
        job.interrupted = True
        self._driving.pop(job.id, None)
        self._publish(job, INTERRUPTED, job.document())

    def _finish(self, job: Job, status: JobStatus) -> None:
        job.status = status
        job.finished_at = time.time()
        self._publish(job, status.value, job.document())
        self._driving.pop(job.id, None)

    @abstractmethod
    def _publish(self, job: Job, kind: str, data: BaseModel | dict[str, Any]) -> None:
        """Persist the job as it now is and append the event `kind`, with the id
        `job.next_event` (then incremented); a final status also drops the uploads."""

    # ---- waiting ----------------------------------------------------------------------

    @abstractmethod
    def follow(self, job: Job, after: int = 0) -> AsyncIterator[JobEvent]:
        """Events with id > `after`, then new ones as they come, until the final one."""

    @abstractmethod
    async def wait(self, job: Job, timeout_s: float | None = None) -> None:
        """Until the job ends, is given back to the queue, or `timeout_s` passes; `job`
        then shows its state at that time."""

    @abstractmethod
    def close(self) -> None:
        """Stop this process's live state (every cancel flag set); what is durable stays
        for the next process."""


class EmbeddedJobStore(JobStore):
    """The store of one process: jobs in memory. With a `persistence`, every state change is
    written through it and a new store picks up where the last one stopped: finished jobs
    stay retrievable until their TTL, unfinished ones come back in `claim_unfinished()`.

    Files: results in `results_dir`, uploads of unfinished jobs in `inputs_dir` (kept so
    that an interrupted job can run again). Only files the store created are deleted.
    """

    def __init__(
        self, *, max_active: int, max_jobs: int, ttl_s: float, results_dir: Path,
        persistence: JobPersistence | None = None, inputs_dir: Path | None = None,
        retry_after_s: int = 5, max_active_per_owner: int | None = None,
    ) -> None:
        super().__init__(max_active=max_active, max_jobs=max_jobs, ttl_s=ttl_s,
                         retry_after_s=retry_after_s, max_active_per_owner=max_active_per_owner)
        self.results_dir = results_dir
        self.inputs_dir = inputs_dir
        self._persistence = persistence
        self._jobs: dict[str, Job] = {}
        results_dir.mkdir(parents=True, exist_ok=True)
        if inputs_dir is not None:
            inputs_dir.mkdir(parents=True, exist_ok=True)
        if persistence is not None:
            for record in persistence.load():
                job = Job.from_record(record)
                self._jobs[job.id] = job
            self._delete_orphans()
            self.purge_expired()

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def active(self) -> int:
        return sum(not j.status.terminal for j in self._jobs.values())

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.created_at)

    def unfinished(self) -> list[Job]:
        return sorted((j for j in self._jobs.values() if not j.status.terminal),
                      key=lambda j: j.created_at)

    def claim_unfinished(self) -> list[Job]:
        claimed = [j for j in self.unfinished() if j.id not in self._driving]
        for job in claimed:
            self._driving[job.id] = job
        return claimed

    def request_cancel(self, job: Job) -> None:
        """This process drives every job it holds: there is no other one to ask."""

    def on_cancel_request(self, cancel: Callable[[Job], None]) -> None:
        """No other process shares these jobs: no request comes."""

    def create(self, steps: int, options: dict[str, Any], *, params: dict[str, Any] | None = None,
               owner: str | None = None) -> Job:
        self.purge_expired()
        if self.active >= self.max_active:
            raise self._too_many_active()
        if owner is not None and self.max_active_per_owner is not None and sum(
                j.owner == owner and not j.status.terminal
                for j in self._jobs.values()) >= self.max_active_per_owner:
            raise self._too_many_for_owner()
        while len(self._jobs) >= self.max_jobs:
            finished = [j for j in self._jobs.values() if j.status.terminal]
            if not finished:
                raise self._full()
            self._remove(min(finished, key=lambda j: j.finished_at or 0))
        job = Job(id=secrets.token_urlsafe(12), steps=steps, options=options,
                  params=params or {}, owner=owner)
        self._jobs[job.id] = job
        self._driving[job.id] = job
        self._save(job)
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job:
        job = self._jobs.get(job_id)
        if job is not None and self._expired(job, time.time()):
            self._remove(job)
            job = None
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(job_id)
        return job

    def discard(self, job: Job) -> None:
        self._remove(job)

    # ---- uploads and results ------------------------------------------------------------

    def save_inputs(self, job: Job, content: bytes, styles: list[bytes]) -> None:
        folder = self._inputs(job)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "content").write_bytes(content)
        for i, data in enumerate(styles):
            (folder / f"style-{i}").write_bytes(data)

    def load_inputs(self, job: Job) -> tuple[bytes, list[bytes]] | None:
        folder = self._inputs(job)
        if folder is None or not (folder / "content").is_file():
            return None
        styles = sorted(folder.glob("style-*"), key=lambda p: int(p.name.split("-")[1]))
        return (folder / "content").read_bytes(), [p.read_bytes() for p in styles]

    def _inputs(self, job: Job) -> Path | None:
        return None if self.inputs_dir is None else self.inputs_dir / job.id

    async def write_result(self, job: Job, data: bytes, extension: str) -> None:
        path = self.results_dir / f"{job.id}.{extension}"
        await asyncio.to_thread(path.write_bytes, data)
        job.result_path = path

    async def read_result(self, job: Job) -> bytes:
        if job.result_path is None:
            raise JobNotFound(job.id)
        try:
            return await asyncio.to_thread(job.result_path.read_bytes)
        except FileNotFoundError:
            raise JobNotFound(job.id) from None

    # ---- events -------------------------------------------------------------------------

    def _publish(self, job: Job, kind: str, data: BaseModel | dict[str, Any]) -> None:
        if job.status.terminal:
            self._delete_inputs(job)
        job.events.append(JobEvent(job.next_event, kind, data))
        job.next_event += 1
        self._save(job)
        changed, job.changed = job.changed, asyncio.Event()
        changed.set()

    def _save(self, job: Job) -> None:
        if self._persistence is not None:
            self._persistence.save(job.record())

    async def follow(self, job: Job, after: int = 0) -> AsyncIterator[JobEvent]:
        last = after
        while True:
            changed = job.changed
            for event in list(job.events):
                if event.id > last:
                    last = event.id
                    yield event
                    if event.type in FINAL_EVENTS:
                        return
            if (job.status.terminal or job.interrupted) and not any(
                    e.id > last for e in job.events):
                return
            await changed.wait()

    async def wait(self, job: Job, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not (job.status.terminal or job.interrupted):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.changed.wait(), remaining)

    # ---- expiry and files -------------------------------------------------------------

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
        self._driving.pop(job.id, None)
        if self._persistence is not None:
            self._persistence.delete(job.id)
        if job.result_path is not None and job.result_path.parent == self.results_dir:
            job.result_path.unlink(missing_ok=True)
        self._delete_inputs(job)

    def _delete_inputs(self, job: Job) -> None:
        folder = self._inputs(job)
        if folder is not None and folder.is_dir():
            for file in folder.iterdir():
                if file.name == "content" or file.name.startswith("style-"):
                    file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: someone else's files stay
                folder.rmdir()

    def _delete_orphans(self) -> None:
        """Results and uploads of jobs no record knows (a crash between file and record)."""
        for file in self.results_dir.iterdir():
            stem, _, ext = file.name.partition(".")
            if (_JOB_ID.match(stem) and ext in ("png", "jpeg", "webp")
                    and stem not in self._jobs):
                file.unlink(missing_ok=True)
        if self.inputs_dir is not None:
            for folder in self.inputs_dir.iterdir():
                if folder.is_dir() and _JOB_ID.match(folder.name) and folder.name not in self._jobs:
                    self._delete_inputs(Job(id=folder.name, steps=0, options={}))

    def close(self) -> None:
        """Without a persistence, the jobs and their files go with the store."""
        for job in list(self._jobs.values()):
            job.cancel.set()
        if self._persistence is not None:
            self._persistence.close()
        else:
            for job in list(self._jobs.values()):
                self._remove(job)


def open_job_store(settings: Settings) -> JobStore:
    """The job store the settings ask for: shared on Redis with `ATELIER_JOB_STORE_URL`,
    else embedded in this process (SQLite and files under `ATELIER_JOBS_DIR`)."""
    limits: dict[str, Any] = {
        "max_active": settings.max_active_jobs, "max_jobs": settings.max_jobs,
        "ttl_s": settings.job_ttl_s, "retry_after_s": max(settings.retry_after_s, 5),
        "max_active_per_owner": settings.max_jobs_per_key if settings.keys_required() else None,
    }
    if settings.job_store_url:
        # Imported only when configured: the embedded store needs no Redis client.
        from app.services.redisjobs import RedisJobStore

        return RedisJobStore(settings.job_store_url, **limits)
    return EmbeddedJobStore(
        results_dir=settings.jobs_dir / "results", inputs_dir=settings.jobs_dir / "inputs",
        persistence=SqliteJobs(settings.jobs_dir / "jobs.sqlite3"), **limits)
