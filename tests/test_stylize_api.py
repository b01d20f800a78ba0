"""POST /stylize and the job API over real HTTP, on the real Caffe VGG19 (tiny sizes).

What needs neither the wire nor the engine (validation, unknown jobs, 409s, job limits and
TTL) runs in-process on a scripted runtime: tests/test_api_inprocess.py.
"""

from __future__ import annotations

import concurrent.futures
import io
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from app.main import create_app
from tests.conftest import LiveServer, make_settings, wait_until
from tests.inprocess import upload
from tests.sse import Event, read_events

DATA = Path(__file__).parent / "data"
PROBLEM = "application/problem+json"
ASYNC = {"prefer": "respond-async"}


def events(client: httpx.Client, job_id: str, **kwargs: Any) -> list[Event]:
    return read_events(client, f"/jobs/{job_id}/events", **kwargs)


@pytest.fixture(scope="module")
def server(real_catalog: object, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    settings = make_settings(
        jobs_dir=tmp_path_factory.mktemp("jobs"), default_size=48, default_steps=8,
        progress_every=2, max_upload_bytes=200_000, max_pixels=250_000,
    )
    with LiveServer(create_app(settings)) as live:
        yield live


def test_a_synchronous_request_answers_with_the_image(server: LiveServer) -> None:
    with server.client() as client:
        response = client.post("/stylize", files=upload(), data={"size": "40", "steps": "4"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        job = client.get(f"/jobs/{response.headers['x-job-id']}").json()
    image = Image.open(io.BytesIO(response.content))
    assert max(image.size) == 40
    assert job["status"] == "succeeded" and job["step"] == 4
    assert job["options"]["style_weight"] == 30.0  # the model manifest's default


def test_async_job_streams_progress_previews_and_a_result(server: LiveServer) -> None:
    with server.client() as client:
        accepted = client.post("/stylize", files=upload(), headers=ASYNC,
                               data={"steps": "6", "preview_every": "3", "format": "webp"})
        assert accepted.status_code == 202
        assert accepted.headers["preference-applied"] == "respond-async"
        job_id = accepted.json()["id"]
        assert accepted.headers["location"] == f"/jobs/{job_id}"
        assert accepted.json()["status"] in ("queued", "running")

        stream = events(client, job_id)
        kinds = [e.event for e in stream]
        assert kinds[-1] == "succeeded"
        assert kinds.count("preview") == 2
        steps = [e.data["step"] for e in stream if e.event == "progress"]
        assert {2, 4, 6} <= set(steps) and steps == sorted(steps)  # at least every 2 steps
        last_progress = [e for e in stream if e.event == "progress"][-1].data
        assert set(last_progress["losses"]) == {"content", "style", "tv", "total"}
        preview = next(e for e in stream if e.event == "preview").data["data_url"]
        assert preview.startswith("data:image/jpeg;base64,")
        ids = [e.id for e in stream]
        assert ids == list(range(1, len(ids) + 1))

        resumed = events(client, job_id, last_event_id=ids[-3])
        assert [e.id for e in resumed] == ids[-2:]

        job = client.get(f"/jobs/{job_id}").json()
        result = client.get(f"/jobs/{job_id}/result")
    assert job["status"] == "succeeded" and job["fraction"] == 1.0
    assert job["created_at"] and job["started_at"] and job["finished_at"]
    assert job["losses"]["total"] > 0
    assert result.status_code == 200 and result.headers["content-type"] == "image/webp"


def test_a_client_that_reconnects_with_last_event_id_gets_only_the_later_events(
    server: LiveServer,
) -> None:
    """Read a few events of a running job, hang up, reconnect with the last id: the rest
    come, none twice, up to the final event."""
    store = server.app.state.stylize.store
    with server.client() as client:
        job_id = client.post("/stylize", files=upload(), headers=ASYNC,
                             data={"steps": "20", "preview_every": "5"}).json()["id"]
        first = events(client, job_id, limit=3)
        unfinished = not store.get(job_id).status.terminal
        rest = events(client, job_id, last_event_id=first[-1].id)
        everything = events(client, job_id)
    assert unfinished  # the first connection closed mid-job
    assert [e.id for e in first] == [1, 2, 3]
    assert first + rest == everything
    assert [e.id for e in rest] == list(range(4, len(everything) + 1))
    assert rest[-1].event == "succeeded" and rest[-1].data["step"] == 20
    assert [e.event for e in rest].count("succeeded") == 1


def test_cancelling_a_running_job_stops_it_within_a_step(server: LiveServer) -> None:
    store = server.app.state.stylize.store
    with server.client() as client:
        job_id = client.post("/stylize", files=upload(), headers=ASYNC,
                             data={"steps": "2000"}).json()["id"]
        wait_until(lambda: (store.get(job_id).step or 0) >= 2, timeout=30)
        t0 = time.monotonic()
        answer = client.delete(f"/jobs/{job_id}")
        stopped_in = time.monotonic() - t0
        stream = events(client, job_id)
        result = client.get(f"/jobs/{job_id}/result")
    assert answer.json()["status"] == "canceled" and stopped_in < 5
    assert answer.json()["step"] < 2000
    assert stream[-1].event == "canceled"
    assert result.status_code == 409
    wait_until(lambda: server.app.state.pool.schedulers["stylize"].in_flight == 0)


def test_a_synchronous_client_that_hangs_up_cancels_its_job(server: LiveServer) -> None:
    store = server.app.state.stylize.store
    before = set(store._jobs)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/stylize", files=upload(), data={"steps": "2000"}, timeout=1.5)
    (job_id,) = set(store._jobs) - before
    wait_until(lambda: store.get(job_id).status.value == "canceled", timeout=15)


def test_generate_is_not_starved_by_a_running_style_job(server: LiveServer) -> None:
    store = server.app.state.stylize.store
    with server.client() as client:
        job_id = client.post("/stylize", files=upload(), headers=ASYNC,
                             data={"steps": "2000"}).json()["id"]
        wait_until(lambda: store.get(job_id).status.value == "running", timeout=30)
        started = time.monotonic()
        answers = [client.post("/generate", json={"seed": i}) for i in range(5)]
        elapsed = time.monotonic() - started
        still_running = store.get(job_id).status.value
        client.delete(f"/jobs/{job_id}")
    assert all(a.status_code == 200 for a in answers)
    assert still_running == "running"
    assert elapsed < 10


def test_a_body_over_the_upload_limit_is_413(server: LiveServer) -> None:
    huge = (DATA / "content.jpg").read_bytes() * 100  # ~330 KB > 200 KB limit
    with server.client() as client:
        response = client.post("/stylize", files=upload(huge))
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert "200000" in response.json()["detail"]


def test_a_chunked_body_over_the_limit_is_refused_while_reading(server: LiveServer) -> None:
    """The client sends 300 KB of a never-ending chunked upload (limit 200 KB) and then
    waits: the 413 must come while the body is still incomplete."""
    head = (b"POST /stylize HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=zzz\r\n\r\n")
    part = (b'--zzz\r\ncontent-disposition: form-data; name="content"; filename="a.jpg"'
            b"\r\ncontent-type: image/jpeg\r\n\r\n")
    chunk = b"x" * 10_000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        raw.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        for _ in range(30):
            raw.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = raw.recv(65536)
            if not data:
                break
            answer += data
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 413 " in status_line
    assert b"application/problem+json" in rest


def test_concurrent_jobs_each_finish(server: LiveServer) -> None:
    def one(seed: int) -> int:
        with server.client() as client:
            return client.post("/stylize", files=upload(),
                               data={"steps": "2", "size": "32", "seed": str(seed)}).status_code

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert list(pool.map(one, range(3))) == [200, 200, 200]


def test_concurrent_jobs_of_one_size_share_a_batch(real_catalog: object, tmp_path: Path
                                                   ) -> None:
    settings = make_settings(jobs_dir=tmp_path / "jobs", style_batch_size=4,
                             default_size=40, progress_every=2)
    with LiveServer(create_app(settings)) as live, live.client() as client:
        pool = live.app.state.pool
        ids = [client.post("/stylize", files=upload(), headers=ASYNC,
                           data={"steps": steps, "seed": str(i)}).json()["id"]
               for i, steps in enumerate(["6", "6", "6"])]
        client.delete(f"/jobs/{ids[2]}")  # may leave the batch mid-run, or never start
        finals = [events(client, job_id)[-1].event for job_id in ids]
        batched = pool.metrics.batch_images.labels("StylizeWork")
    assert finals == ["succeeded", "succeeded", "canceled"]
    assert batched._sum.get() >= 2 and batched._sum.get() / max(1, _count(batched)) > 1


def _count(histogram: Any) -> float:
    return sum(bucket.get() for bucket in histogram._buckets)
