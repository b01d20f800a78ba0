"""The job store shared by every server on one Redis (`ATELIER_JOB_STORE_URL=redis://...`).

Every ingress process sees every job: its document, its events (SSE with resume), its
uploads and its result, and the limits count all processes' jobs. Keys (prefix `atelier:`):

    job:{id}           hash: the job's fields (JSON values, as `JobRecord`), `driver`
    job:{id}:events    stream: event `N` has the stream id `N-0` (fields `type`, `data`)
    job:{id}:result    string: the encoded result
    job:{id}:inputs    hash: `content`, `style:0`, `style:1`... while the job is unfinished
    jobs               sorted set: every job id, by creation time
    active             sorted set: unfinished job ids, by creation time
    finished           sorted set: finished job ids, by finish time (eviction, expiry)
    driver:{driver}    string with an expiry: the heartbeat of a live process
    cancel             pub/sub channel: ids of jobs to cancel, for whichever process drives them

A finished job's keys expire with the job TTL (and `purge_expired` drops them from the
indexes). Each state change is one round trip: a Lua script that checks this process still
drives the job, appends the event and writes the document (and, at the end, moves the job
to `finished`, drops its uploads and sets the expiry). Admission (limits, eviction) and
claiming are scripts too, so concurrent processes never exceed a limit or share a job.
Scripts name keys they compute from the prefix: one Redis server (or a primary with
replicas), not Redis Cluster.

Each process drives the jobs it created or claimed, and keeps `driver:{its id}` alive from a
thread; a process that stops gives its unfinished jobs back (`requeue`), one that dies lets
its heartbeat expire, and either way `claim_unfinished` in another process takes them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import redis
import redis.asyncio
from pydantic import BaseModel

from app.services.jobdb import JobRecord
from app.services.jobs import (
    FINAL_EVENTS,
    Job,
    JobDocument,
    JobEvent,
    JobNotFound,
    JobProgress,
    JobStatus,
    JobStore,
)

log = logging.getLogger("atelier.jobs")

DEFAULT_PREFIX = "atelier:"
EVENTS_KEPT = 512  # per job, as the embedded store's deque
# A follower's or waiter's blocking read returns this often to notice a job that expired,
# was discarded or was given back without a final event.
BLOCK_S = 5.0

_LUA_REMOVE_JOB = """
local function remove_job(prefix, id)
  local job = prefix .. 'job:' .. id
  redis.call('DEL', job, job .. ':events', job .. ':result', job .. ':inputs')
  redis.call('ZREM', prefix .. 'jobs', id)
  redis.call('ZREM', prefix .. 'active', id)
  redis.call('ZREM', prefix .. 'finished', id)
end
local function purge_expired(prefix, finished_before)
  local ids = redis.call('ZRANGEBYSCORE', prefix .. 'finished', '-inf', '(' .. finished_before)
  for _, id in ipairs(ids) do remove_job(prefix, id) end
  return #ids
end
"""

# ARGV: prefix, created_at, finished_before, max_active, max_jobs, owner (JSON, '' for no
# per-owner limit), max_active_per_owner, id, then the job's field/value pairs.
_LUA_CREATE = _LUA_REMOVE_JOB + """
local prefix = ARGV[1]
purge_expired(prefix, ARGV[3])
local active = prefix .. 'active'
if redis.call('ZCARD', active) >= tonumber(ARGV[4]) then return 'active' end
if ARGV[6] ~= '' then
  local n = 0
  for _, id in ipairs(redis.call('ZRANGE', active, 0, -1)) do
    if redis.call('HGET', prefix .. 'job:' .. id, 'owner') == ARGV[6] then n = n + 1 end
  end
  if n >= tonumber(ARGV[7]) then return 'owner' end
end
local jobs = prefix .. 'jobs'
while redis.call('ZCARD', jobs) >= tonumber(ARGV[5]) do
  local oldest = redis.call('ZRANGE', prefix .. 'finished', 0, 0)
  if #oldest == 0 then return 'full' end
  remove_job(prefix, oldest[1])
end
local id = ARGV[8]
redis.call('HSET', prefix .. 'job:' .. id, unpack(ARGV, 9))
redis.call('ZADD', jobs, ARGV[2], id)
redis.call('ZADD', active, ARGV[2], id)
return 'ok'
"""

# ARGV: prefix, id, driver (who must drive the job), event id, event type, event data,
# final ('1'/'0'), finished_at, ttl_ms, events kept, then the job's field/value pairs.
# Returns 0, changing nothing, when the job is gone or another process drives it. XADD
# comes first: it refuses an id that is not new, and then nothing has changed either.
_LUA_PUBLISH = """
local prefix, id = ARGV[1], ARGV[2]
local job = prefix .. 'job:' .. id
if redis.call('HGET', job, 'driver') ~= ARGV[3] then return 0 end
redis.call('XADD', job .. ':events', 'MAXLEN', '~', ARGV[10], ARGV[4] .. '-0',
           'type', ARGV[5], 'data', ARGV[6])
redis.call('HSET', job, unpack(ARGV, 11))
if ARGV[7] == '1' then
  redis.call('ZREM', prefix .. 'active', id)
  redis.call('ZADD', prefix .. 'finished', ARGV[8], id)
  redis.call('DEL', job .. ':inputs')
  for _, key in ipairs({job, job .. ':events', job .. ':result'}) do
    redis.call('PEXPIRE', key, ARGV[9])
  end
end
return 1
"""

# ARGV: prefix, claiming driver, then job ids (none: every unfinished job). Claims the
# unfinished ones that no live process drives: given back (driver '') or whose driver's
# heartbeat has expired.
_LUA_CLAIM = """
local prefix, me = ARGV[1], ARGV[2]
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', prefix .. 'active', 0, -1)
end
local claimed = {}
for _, id in ipairs(ids) do
  local job = prefix .. 'job:' .. id
  local driver = redis.call('HGET', job, 'driver')
  if driver and redis.call('ZSCORE', prefix .. 'active', id)
      and (driver == '' or redis.call('EXISTS', prefix .. 'driver:' .. driver) == 0) then
    redis.call('HSET', job, 'driver', me)
    claimed[#claimed + 1] = id
  end
end
return claimed
"""

_LUA_PURGE = _LUA_REMOVE_JOB + "return purge_expired(ARGV[1], ARGV[2])"
_LUA_REMOVE = _LUA_REMOVE_JOB + "remove_job(ARGV[1], ARGV[2])"

_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(JobRecord))

# What the clients return with bytes responses (their annotations cover every mode).
_Fields = dict[bytes, bytes]
_StreamEntries = list[tuple[bytes, list[tuple[bytes, _Fields]]]]


def _job_fields(job: Job, driver: str) -> list[str]:
    """The job's hash as field/value pairs, flat (the scripts' ARGV)."""
    pairs = [(name, json.dumps(value))
             for name, value in dataclasses.asdict(job.record()).items()]
    return [item for pair in [*pairs, ("driver", driver)] for item in pair]


def _job(fields: _Fields) -> Job:
    values = {k.decode(): v.decode() for k, v in fields.items()}
    job = Job.from_record(JobRecord(**{n: json.loads(values[n]) for n in _RECORD_FIELDS}))
    # Given back to the queue and not yet claimed: as `requeue` leaves its own job.
    job.interrupted = not job.status.terminal and values.get("driver") == ""
    return job


def _event_json(data: BaseModel | dict[str, Any]) -> str:
    return data.model_dump_json() if isinstance(data, BaseModel) else json.dumps(data)


def _event(entry_id: bytes, fields: _Fields) -> JobEvent:
    kind = fields[b"type"].decode()
    raw = json.loads(fields[b"data"])
    data: BaseModel | dict[str, Any] = raw
    if kind == "progress":
        data = JobProgress.model_validate(raw)
    elif kind in FINAL_EVENTS:
        data = JobDocument.model_validate(raw)
    return JobEvent(int(entry_id.split(b"-")[0]), kind, data)


class RedisJobStore(JobStore):
    def __init__(
        self, url: str, *, max_active: int, max_jobs: int, ttl_s: float,
        retry_after_s: int = 5, max_active_per_owner: int | None = None,
        driver_ttl_s: float = 10.0, prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__(max_active=max_active, max_jobs=max_jobs, ttl_s=ttl_s,
                         retry_after_s=retry_after_s, max_active_per_owner=max_active_per_owner)
        self.url = url
        self.prefix = prefix
        self.driver_id = secrets.token_hex(8)
        self.driver_ttl_s = driver_ttl_s
        # Calls from the event loop are single round trips; the timeout bounds how long an
        # unreachable Redis can hold the loop.
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
        self._create = self._redis.register_script(_LUA_CREATE)
        self._publish_script = self._redis.register_script(_LUA_PUBLISH)
        self._claim = self._redis.register_script(_LUA_CLAIM)
        self._purge = self._redis.register_script(_LUA_PURGE)
        self._remove_script = self._redis.register_script(_LUA_REMOVE)
        self._cancel: Callable[[Job], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = threading.Event()
        self._beat()  # alive before it drives anything
        self._pubsub = self._redis.pubsub(  # type: ignore[no-untyped-call]
            ignore_subscribe_messages=True)
        self._pubsub.subscribe(self._cancel_channel)
        self._thread = threading.Thread(target=self._keep_alive, name="atelier-job-store",
                                        daemon=True)
        self._thread.start()

    # ---- keys -----------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _events_key(self, job_id: str) -> str:
        return f"{self._job_key(job_id)}:events"

    def _result_key(self, job_id: str) -> str:
        return f"{self._job_key(job_id)}:result"

    def _inputs_key(self, job_id: str) -> str:
        return f"{self._job_key(job_id)}:inputs"

    @property
    def _heartbeat_key(self) -> str:
        return f"{self.prefix}driver:{self.driver_id}"

    @property
    def _cancel_channel(self) -> str:
        return f"{self.prefix}cancel"

    @property
    def _ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    # ---- queries and admission --------------------------------------------------------

    def __len__(self) -> int:
        return int(self._redis.zcard(f"{self.prefix}jobs"))

    @property
    def active(self) -> int:
        return int(self._redis.zcard(f"{self.prefix}active"))

    def jobs(self) -> list[Job]:
        return self._load_all(self._ids("jobs"))

    def unfinished(self) -> list[Job]:
        return self._load_all(self._ids("active"))

    def _ids(self, index: str) -> list[bytes]:
        return cast(list[bytes], self._redis.zrange(f"{self.prefix}{index}", 0, -1))

    def _load_all(self, ids: list[bytes]) -> list[Job]:
        """The jobs of `ids` in that order (this process's own objects for the jobs it
        drives), skipping those gone meanwhile; one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._job_key(job_id.decode()))
        jobs = []
        for job_id, fields in zip(ids, pipe.execute(), strict=True):
            live = self._driving.get(job_id.decode())
            if live is not None:
                jobs.append(live)
            elif fields:
                jobs.append(_job(fields))
        return jobs

    def _load(self, job_id: str) -> Job | None:
        fields = cast(_Fields, self._redis.hgetall(self._job_key(job_id)))
        return _job(fields) if fields else None

    def create(self, steps: int, options: dict[str, Any], *, params: dict[str, Any] | None = None,
               owner: str | None = None) -> Job:
        job = Job(id=secrets.token_urlsafe(12), steps=steps, options=options,
                  params=params or {}, owner=owner)
        per_owner = owner is not None and self.max_active_per_owner is not None
        outcome = self._create(args=[
            self.prefix, repr(job.created_at), repr(time.time() - self.ttl_s), self.max_active,
            self.max_jobs, json.dumps(owner) if per_owner else "",
            self.max_active_per_owner or 0, job.id, *_job_fields(job, self.driver_id)])
        if outcome == b"active":
            raise self._too_many_active()
        if outcome == b"owner":
            raise self._too_many_for_owner()
        if outcome == b"full":
            raise self._full()
        self._drive(job)
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job:
        job = self._driving.get(job_id) or self._load(job_id)
        if job is None or (job.finished_at is not None
                           and time.time() - job.finished_at > self.ttl_s):
            # Expired (its keys, or only its time), and the purge has not come by yet.
            self._remove(job_id)
            job = None
        if job is None or (owner is not None and job.owner != owner):
            raise JobNotFound(job_id)
        return job

    def discard(self, job: Job) -> None:
        self._remove(job.id)

    def _remove(self, job_id: str) -> None:
        self._driving.pop(job_id, None)
        self._remove_script(args=[self.prefix, job_id])

    def purge_expired(self) -> int:
        return int(self._purge(args=[self.prefix, repr(time.time() - self.ttl_s)]))

    # ---- who drives what --------------------------------------------------------------

    def _drive(self, job: Job) -> None:
        self._driving[job.id] = job
        # Cancel requests arrive on the heartbeat thread and go to the loop of the jobs.
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()

    def claim_unfinished(self) -> list[Job]:
        claimed = self._claim(args=[self.prefix, self.driver_id])
        jobs = self._load_all(claimed)
        for job in jobs:
            self._drive(job)
        return sorted(jobs, key=lambda j: j.created_at)

    def request_cancel(self, job: Job) -> None:
        if self._claim(args=[self.prefix, self.driver_id, job.id]):
            # No live process drives it (its driver died, or it is back in the queue): this
            # one ends it.
            claimed = self._load(job.id)
            if claimed is not None:
                self._drive(claimed)
                self.cancelled(claimed)
            return
        self._redis.publish(self._cancel_channel, job.id)

    def on_cancel_request(self, cancel: Callable[[Job], None]) -> None:
        self._cancel = cancel

    def _beat(self) -> None:
        self._redis.set(self._heartbeat_key, b"1", px=max(1, round(self.driver_ttl_s * 1000)))

    def _keep_alive(self) -> None:
        """The heartbeat and the cancel requests, on a thread of their own: a busy or
        blocked event loop never lets the heartbeat lapse."""
        interval = self.driver_ttl_s / 4
        next_beat = time.monotonic() + interval
        unreachable = False
        while not self._closing.is_set():
            try:
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + interval
                # The pub/sub connection reconnects and subscribes again by itself. Short
                # reads, so that `close` is not kept waiting.
                message = self._pubsub.get_message(
                    timeout=max(0.0, min(0.1, next_beat - time.monotonic())))
            except redis.RedisError as exc:
                if not unreachable:
                    log.warning("job store: Redis unreachable (%s); retrying", exc)
                unreachable = True
                self._closing.wait(0.5)
                continue
            if unreachable:
                log.warning("job store: Redis reachable again")
                unreachable = False
            if message is not None:
                self._cancel_requested(message["data"].decode())

    def _cancel_requested(self, job_id: str) -> None:
        job, cancel, loop = self._driving.get(job_id), self._cancel, self._loop
        if job is None or cancel is None or loop is None:
            return  # another process drives it
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing runs anymore
            loop.call_soon_threadsafe(cancel, job)

    # ---- uploads and results ----------------------------------------------------------

    def save_inputs(self, job: Job, content: bytes, styles: list[bytes]) -> None:
        self._redis.hset(self._inputs_key(job.id), mapping={
            "content": content, **{f"style:{i}": data for i, data in enumerate(styles)}})

    def load_inputs(self, job: Job) -> tuple[bytes, list[bytes]] | None:
        fields = cast(_Fields, self._redis.hgetall(self._inputs_key(job.id)))
        if b"content" not in fields:
            return None
        styles = sorted((int(k.split(b":")[1]), v) for k, v in fields.items()
                        if k.startswith(b"style:"))
        return fields[b"content"], [data for _, data in styles]

    async def write_result(self, job: Job, data: bytes, extension: str) -> None:
        # The job's TTL from now: a result whose job never finishes does not stay.
        await asyncio.to_thread(self._redis.set, self._result_key(job.id), data,
                                px=self._ttl_ms)

    async def read_result(self, job: Job) -> bytes:
        data = cast(bytes | None, await asyncio.to_thread(self._redis.get,
                                                          self._result_key(job.id)))
        if data is None:
            raise JobNotFound(job.id)
        return data

    # ---- events -------------------------------------------------------------------------

    def _publish(self, job: Job, kind: str, data: BaseModel | dict[str, Any]) -> None:
        event_id = job.next_event
        job.next_event += 1
        # A job given back (`requeue`) is no longer in `_driving`: its driver becomes ''.
        driver = self.driver_id if job.id in self._driving else ""
        written = self._publish_script(args=[
            self.prefix, job.id, self.driver_id, event_id, kind, _event_json(data),
            "1" if job.status.terminal else "0", repr(job.finished_at or 0.0), self._ttl_ms,
            EVENTS_KEPT, *_job_fields(job, driver)])
        if not written:
            # Expired, discarded, or claimed by another process (this one was taken for
            # dead): stop working on it.
            log.warning("job %s: no longer driven by this process; it stops here", job.id)
            self._driving.pop(job.id, None)
            job.cancel.set()

    def _async_redis(self) -> redis.asyncio.Redis:
        """A client of the running loop: each follower or waiter blocks on a connection of
        its own."""
        return redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=5,
                                            socket_timeout=BLOCK_S + 10)

    async def _status(self, client: redis.asyncio.Redis,
                      job_id: str) -> tuple[JobStatus | None, bool]:
        """(status, whether it is given back to the queue and not yet claimed); None once
        the job is gone."""
        status, driver = await client.hmget(self._job_key(job_id), ["status", "driver"])
        return (None if status is None else JobStatus(json.loads(status))), driver == b""

    async def follow(self, job: Job, after: int = 0) -> AsyncIterator[JobEvent]:
        key, last = self._events_key(job.id), f"{after}-0"
        async with self._async_redis() as client:
            while True:
                # What is there already; only when nothing is, block (the explicit id means
                # an event added between the two reads is not missed).
                entries = cast(_StreamEntries,
                               await client.xread({key: last}, count=EVENTS_KEPT))
                if not entries:
                    # A job given back goes on when a process claims it: keep following.
                    status, _given_back = await self._status(client, job.id)
                    if status is None or status.terminal:
                        return
                    entries = cast(_StreamEntries, await client.xread(
                        {key: last}, count=EVENTS_KEPT, block=round(BLOCK_S * 1000)))
                for _stream, stream_entries in entries:
                    for entry_id, fields in stream_entries:
                        last = entry_id.decode()
                        event = _event(entry_id, fields)
                        yield event
                        if event.type in FINAL_EVENTS:
                            return

    async def wait(self, job: Job, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        key = self._events_key(job.id)
        async with self._async_redis() as client:
            while not (job.status.terminal or job.interrupted):
                newest = cast(list[tuple[bytes, _Fields]],
                              await client.xrevrange(key, count=1))
                status, given_back = await self._status(client, job.id)
                if status is None or status.terminal or given_back:
                    break
                block_s = BLOCK_S
                if deadline is not None:
                    block_s = min(block_s, deadline - time.monotonic())
                    if block_s <= 0:
                        break
                # At least 1 ms: 0 would block for good.
                await client.xread({key: newest[0][0] if newest else "0-0"}, count=1,
                                   block=max(1, round(block_s * 1000)))
        if self._driving.get(job.id) is not job:
            self._refresh(job)

    def _refresh(self, job: Job) -> None:
        """Bring a copy read earlier up to date (the job's own process keeps its object
        current itself)."""
        current = self._load(job.id)
        if current is not None:
            for name in (*_RECORD_FIELDS, "interrupted"):
                setattr(job, name, getattr(current, name))

    def close(self) -> None:
        """Jobs still driven here become claimable at once (the heartbeat goes)."""
        for job in self._driving.values():
            job.cancel.set()
        self._closing.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(redis.RedisError):
            self._redis.delete(self._heartbeat_key)
        self._pubsub.close()
        self._redis.close()
