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
from tests.test_durability import upload

pytestmark = pytest.mark.slow


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


def test_a_job_left_by_a_server_that_died_is_run_by_a_live_one(
    real_catalog: object, redis_url: str, tmp_path: Path,
) -> None:
    """A real `atelier serve` is killed (SIGKILL) with a job running; the other server, up
    all along, takes the job once the dead one's heartbeat expires, and runs it to the end."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    from app.settings import PROJECT_ROOT
    from tests.conftest import CATALOG_DIR, MODEL_DIR, free_port

    port = free_port()
    env = {**os.environ, "ATELIER_JOB_STORE_URL": redis_url, "ATELIER_PORT": str(port),
           "ATELIER_DEVICES": "cpu", "ATELIER_LOG_LEVEL": "WARNING",
           "ATELIER_CATALOG_DIR": str(CATALOG_DIR), "ATELIER_MODEL_DIR": str(MODEL_DIR),
           "ATELIER_JOBS_DIR": str(tmp_path / "dying")}
    dying = subprocess.Popen([sys.executable, "-m", "app.cli", "serve"], cwd=PROJECT_ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(url), timeout=60)
        with LiveServer(create_app(make_settings(job_store_url=redis_url))) as live, \
                live.client() as on_live:
            job_id = httpx.post(f"{url}/stylize", timeout=30,
                                **upload(size=32, steps=400)).json()["id"]
            wait_until(lambda: on_live.get(f"/jobs/{job_id}").json()["step"] > 0, timeout=60)
            os.kill(dying.pid, signal.SIGKILL)
            dying.wait(10)
            # heartbeat 10 s + a scan every 5 s, then 400 steps at 32 px
            wait_until(lambda: on_live.get(f"/jobs/{job_id}").json()["status"] == "succeeded",
                       timeout=90)
            assert on_live.get(f"/jobs/{job_id}/result").status_code == 200
    finally:
        if dying.poll() is None:
            dying.kill()


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
