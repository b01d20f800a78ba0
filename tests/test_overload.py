"""Overload at 4x capacity: only 200/202/503/429 come back, and nothing accepted is lost.

A real server (LiveServer, real weights on the CPU) with small capacities: `/generate`
admits `QUEUE_SIZE` items, `/stylize` `MAX_ACTIVE_JOBS` jobs. Four times as many clients
as that, released together, send requests back to back for `DURATION_S` without honouring
Retry-After: `GENERATE_CLIENTS` on `/generate` (n of 1..4), `STYLE_CLIENTS` async
`/stylize` jobs (32 px, 2..5 steps); every third accepted job is cancelled on purpose. The
same again with API keys on (`max_jobs_per_key`), where a key over its quota gets 429.

Asserted: every answer is 200 (generate), 202 (stylize), or a 503 (or 429, per key)
problem+json with Retry-After: no other status, no connection error; every accepted job
ends (succeeded, or cancelled when the test cancelled it; none failed, queued, running or
lost) with a result for every succeeded one; afterwards the pool is empty (metrics), its
refusals were counted, `/readyz` answers 200 and new requests succeed. The figures are
printed (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import io
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from PIL import Image

from app.main import create_app
from tests.conftest import LiveServer, make_settings

QUEUE_SIZE = 8
MAX_ACTIVE_JOBS = 4
LOAD = 4  # times the capacity
GENERATE_CLIENTS = LOAD * QUEUE_SIZE  # 32
STYLE_CLIENTS = LOAD * MAX_ACTIVE_JOBS  # 16
DURATION_S = 6.0  # each client sends requests back to back for this long
PAUSE_S = 0.05  # after a refusal: impatient clients, Retry-After is not honoured
CANCEL_EVERY = 3  # every third accepted job is cancelled at once
KEYS = ["key-a", "key-b", "key-c"]
JOBS_PER_KEY = 1  # with KEYS: 3 x 1 < MAX_ACTIVE_JOBS, so the keys' quotas bind (429)
FINAL = {"succeeded", "failed", "canceled"}
PROBLEM_JSON = "application/problem+json"


def _jpeg(width: int, height: int, seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    image.putdata([(rng.randrange(256), x * 255 // width, y * 255 // height)
                   for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


CONTENT = _jpeg(48, 32, 1)
STYLE = _jpeg(32, 32, 2)
FILES = [("content", ("c.jpg", CONTENT, "image/jpeg")), ("style", ("s.jpg", STYLE, "image/jpeg"))]


@dataclass
class Tally:
    """What the clients saw, shared by their threads."""

    refusals: frozenset[int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[str, Counter[int]] = field(
        default_factory=lambda: {"generate": Counter(), "stylize": Counter()})
    errors: list[str] = field(default_factory=list)  # anything not allowed, and why
    accepted: dict[str, dict[str, str]] = field(default_factory=dict)  # job id: its headers
    canceled: set[str] = field(default_factory=set)
    problems: Counter[str] = field(default_factory=Counter)

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    def record(self, kind: str, response: httpx.Response, allowed: int) -> None:
        """Count an answer; anything but `allowed` or a proper refusal is an error."""
        with self.lock:
            self.statuses[kind][response.status_code] += 1
        status = response.status_code
        if status == allowed:
            return
        if status not in self.refusals:
            self.error(f"{kind}: {status} {response.text[:300]}")
            return
        if not response.headers.get("retry-after", "").isdigit():
            self.error(f"{kind}: {status} without Retry-After {response.headers}")
        if response.headers.get("content-type") != PROBLEM_JSON:
            self.error(f"{kind}: {status} not problem+json {response.headers}")
            return
        problem = response.json()
        with self.lock:
            self.problems[f"{kind} {status} {problem['type']}"] += 1
        if problem.get("status") != status or not problem.get("request_id"):
            self.error(f"{kind}: {status} problem incomplete {problem}")


def _generate_client(client: httpx.Client, headers: dict[str, str], tally: Tally,
                     start: threading.Barrier, seed: int) -> None:
    rng = random.Random(seed)
    start.wait()
    until = time.monotonic() + DURATION_S
    while time.monotonic() < until:
        try:
            response = client.post("/generate", headers=headers,
                                   json={"seed": rng.randrange(2**32), "n": rng.randint(1, 4)})
        except httpx.HTTPError as exc:
            tally.error(f"generate: {exc!r}")
            continue
        tally.record("generate", response, 200)
        if response.status_code != 200:
            time.sleep(PAUSE_S)
        elif not response.content.startswith(b"\x89PNG"):
            tally.error("generate: 200 without a PNG")


def _style_client(client: httpx.Client, headers: dict[str, str], tally: Tally,
                  start: threading.Barrier, seed: int) -> None:
    rng = random.Random(seed)
    start.wait()
    until = time.monotonic() + DURATION_S
    while time.monotonic() < until:
        try:
            response = client.post(
                "/stylize", headers={**headers, "Prefer": "respond-async"}, files=FILES,
                data={"size": "32", "steps": str(rng.randint(2, 5)),
                      "seed": str(rng.randrange(1000))})
        except httpx.HTTPError as exc:
            tally.error(f"stylize: {exc!r}")
            continue
        tally.record("stylize", response, 202)
        if response.status_code != 202:
            time.sleep(PAUSE_S)
            continue
        job_id = response.json()["id"]
        if response.headers.get("location") != f"/jobs/{job_id}":
            tally.error(f"stylize: 202 without Location {response.headers}")
        with tally.lock:
            tally.accepted[job_id] = headers
            cancel_it = len(tally.accepted) % CANCEL_EVERY == 0
            if cancel_it:
                tally.canceled.add(job_id)
        if cancel_it:
            try:
                cancel = client.delete(f"/jobs/{job_id}", headers=headers)
            except httpx.HTTPError as exc:
                tally.error(f"DELETE: {exc!r}")
                continue
            if cancel.status_code != 200:
                tally.error(f"DELETE: {cancel.status_code} {cancel.text[:300]}")


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry these labels."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _wait_final(client: httpx.Client, tally: Tally) -> dict[str, str]:
    """Each accepted job's final status; fails on a lost (404) or stuck job."""
    outcomes: dict[str, str] = {}
    deadline = time.monotonic() + 120
    for job_id, headers in tally.accepted.items():
        while True:
            response = client.get(f"/jobs/{job_id}", headers=headers)
            assert response.status_code == 200, (job_id, response.text)  # not lost
            job: dict[str, Any] = response.json()
            if job["status"] in FINAL:
                outcomes[job_id] = job["status"]
                break
            assert time.monotonic() < deadline, f"job stuck: {job}"
            time.sleep(0.05)
    return outcomes


@pytest.mark.parametrize("api_keys", [False, True], ids=["open", "api-keys"])
def test_four_times_capacity_only_200_202_503_429_and_every_accepted_job_ends(
        api_keys: bool, real_catalog: object) -> None:
    keys = KEYS if api_keys else []
    settings = make_settings(queue_size=QUEUE_SIZE, max_active_jobs=MAX_ACTIVE_JOBS,
                             max_images_per_request=4, max_batch_images=8, max_steps=5,
                             max_size=32, default_size=32, default_steps=2,
                             api_keys=",".join(keys), max_jobs_per_key=JOBS_PER_KEY)

    def auth(i: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[i % len(keys)]}"} if keys else {}

    tally = Tally(refusals=frozenset({503, 429} if keys else {503}))
    clients = GENERATE_CLIENTS + STYLE_CLIENTS
    start = threading.Barrier(clients)
    # Idle connections expire on the client well before uvicorn closes them (5 s): a
    # client that reuses one the server is closing that instant gets a reset, which is
    # the keep-alive race every HTTP/1.1 client must avoid, not an overload failure.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients,
                          keepalive_expiry=2.0)
    with LiveServer(create_app(settings)) as server, contextlib.ExitStack() as stack:
        # One client (and connection pool) per thread, as separate users have. With one
        # pool shared by all threads, a read once failed with EBADF on the client side (seen
        # once in CI, not reproduced): its own pool per thread rules that sharing out.
        def new_client() -> httpx.Client:
            return stack.enter_context(
                httpx.Client(base_url=server.url, timeout=60, limits=limits))

        client = new_client()
        started = time.monotonic()
        threads = [threading.Thread(target=_generate_client,
                                    args=(new_client(), auth(i), tally, start, i))
                   for i in range(GENERATE_CLIENTS)]
        threads += [threading.Thread(target=_style_client,
                                     args=(new_client(), auth(i), tally, start, 1000 + i))
                    for i in range(STYLE_CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DURATION_S + 90)
        assert not any(t.is_alive() for t in threads), "a client is stuck"
        burst_s = time.monotonic() - started

        # Every accepted job ends, none is lost; the cancelled ones may have finished first.
        outcomes = _wait_final(client, tally)
        drained_s = time.monotonic() - started
        for job_id, status in outcomes.items():
            headers = tally.accepted[job_id]
            allowed = {"succeeded", "canceled"} if job_id in tally.canceled else {"succeeded"}
            assert status in allowed, client.get(f"/jobs/{job_id}", headers=headers).json()
            if status == "succeeded":
                result = client.get(f"/jobs/{job_id}/result", headers=headers)
                assert result.status_code == 200, (job_id, result.text)
                assert result.content.startswith(b"\x89PNG")

        # The pool is empty, its refusals were counted, nothing failed.
        metrics = client.get("/metrics", headers=auth(0)).text
        for lane in ("generate", "stylize"):
            assert _metric(metrics, "atelier_in_flight", lane=lane) == 0, metrics
            assert _metric(metrics, "atelier_queue_length", lane=lane) == 0, metrics
        assert _metric(metrics, "atelier_failed_batches_total") == 0, metrics
        assert (_metric(metrics, "atelier_rejected_total", lane="generate")
                == tally.statuses["generate"][503]), metrics

        # Healthy afterwards.
        assert client.get("/readyz").status_code == 200
        after = client.post("/generate", headers=auth(0), json={"seed": 1, "n": 2})
        assert after.status_code == 200, after.text
        job = client.post("/stylize", headers=auth(0), files=FILES,
                          data={"size": "32", "steps": "2"})
        assert job.status_code == 200, job.text

    print(f"\n\noverload at {LOAD}x capacity{' with API keys' if keys else ''}: {clients} "
          f"clients for {DURATION_S:g} s (queue_size {QUEUE_SIZE}, max_active_jobs "
          f"{MAX_ACTIVE_JOBS}{f', max_jobs_per_key {JOBS_PER_KEY}' if keys else ''})")
    for kind, counts in tally.statuses.items():
        print(f"  {kind:9} {sum(counts.values()):4} requests  {dict(sorted(counts.items()))}")
    print(f"  refusals: {dict(tally.problems)}")
    print(f"  accepted jobs {len(tally.accepted)}: {dict(Counter(outcomes.values()))} "
          f"({len(tally.canceled)} cancelled on purpose)")
    print(f"  burst {burst_s:.1f} s, every job final after {drained_s:.1f} s")
    assert not tally.errors, "\n".join(tally.errors[:20])
    assert tally.statuses["generate"][503] > 0, "the generate queue was never full"
    if keys:
        assert tally.statuses["stylize"][429] > 0, "no key ever went over its quota"
    else:
        assert tally.statuses["stylize"][503] > 0, "the style lane was never full"
    assert tally.statuses["generate"][200] > 0 and tally.accepted
