"""Two servers on one Redis (ATELIER_JOB_STORE_URL): a job posted to one is followed,
fetched and cancelled through the other. Real HTTP, the real VGG on tiny images."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from tests.conftest import LiveServer, make_settings, wait_until
from tests.sse import read_events

DATA = Path(__file__).parent / "data"
ASYNC = {"prefer": "respond-async"}

pytestmark = pytest.mark.slow


def upload(**fields: Any) -> dict[str, Any]:
    return {
        "files": [("content", ("c.jpg", (DATA / "content.jpg").read_bytes(), "image/jpeg")),
                  ("style", ("s.jpg", (DATA / "starry.jpg").read_bytes(), "image/jpeg"))],
        "data": {k: str(v) for k, v in fields.items()},
        "headers": ASYNC,
    }


def test_a_job_posted_to_one_server_is_followed_fetched_and_cancelled_through_another(
    real_catalog: object, redis_url: str,
) -> None:
    def settings() -> Any:
        return make_settings(job_store_url=redis_url, default_size=48, progress_every=2)

    with (LiveServer(create_app(settings())) as a, LiveServer(create_app(settings())) as b,
          a.client() as on_a, b.client() as on_b):
        accepted = on_a.post("/stylize", **upload(steps=6))
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]

        stream = read_events(on_b, f"/jobs/{job_id}/events")
        assert stream[-1].event == "succeeded" and stream[-1].data["id"] == job_id
        assert [e.id for e in stream] == list(range(1, len(stream) + 1))
        assert {2, 4, 6} <= {e.data["step"] for e in stream if e.event == "progress"}
        resumed = read_events(on_b, f"/jobs/{job_id}/events", last_event_id=stream[-3].id)
        assert [e.id for e in resumed] == [e.id for e in stream[-2:]]

        from_b, from_a = on_b.get(f"/jobs/{job_id}/result"), on_a.get(f"/jobs/{job_id}/result")
        assert from_b.status_code == 200 and from_b.headers["content-type"] == "image/png"
        assert from_b.headers["x-job-id"] == job_id and from_b.content == from_a.content
        assert on_b.get(f"/jobs/{job_id}").json() == on_a.get(f"/jobs/{job_id}").json()

        running = on_a.post("/stylize", **upload(steps=2000)).json()["id"]
        wait_until(lambda: on_b.get(f"/jobs/{running}").json()["step"] >= 2, timeout=60)
        started = time.monotonic()
        answer = on_b.delete(f"/jobs/{running}")
        stopped_in = time.monotonic() - started
        assert answer.status_code == 200
        assert answer.json()["status"] == "canceled" and stopped_in < 5
        assert on_a.get(f"/jobs/{running}").json()["status"] == "canceled"
        wait_until(lambda: a.app.state.pool.schedulers["stylize"].in_flight == 0)
        assert read_events(on_b, f"/jobs/{running}/events")[-1].event == "canceled"
