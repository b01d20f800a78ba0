"""Nothing lost: `atelier serve` stopped with SIGTERM and started again on the same jobs dir.

Real processes, real signals, the real VGG on tiny images.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.sse import Event, stream
from tests.test_server_boot import atelier_command

DATA = Path(__file__).parent / "data"
ASYNC = {"prefer": "respond-async"}
GRACE_S = 1.0

pytestmark = pytest.mark.slow


def upload(**fields: Any) -> dict[str, Any]:
    return {
        "files": [("content", ("c.jpg", (DATA / "content.jpg").read_bytes(), "image/jpeg")),
                  ("style", ("s.jpg", (DATA / "starry.jpg").read_bytes(), "image/jpeg"))],
        "data": {k: str(v) for k, v in fields.items()},
        "headers": ASYNC,
    }


class Service:
    def __init__(self, jobs_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "ATELIER_PORT": str(self.port), "ATELIER_JOBS_DIR": str(jobs_dir),
               "ATELIER_DEVICES": "cpu", "ATELIER_LOG_FORMAT": "json",
               "ATELIER_SHUTDOWN_GRACE_S": str(GRACE_S), "ATELIER_PROGRESS_EVERY": "1",
               "ATELIER_STYLE_BATCH_SIZE": "1"}
        self.proc = subprocess.Popen([*atelier_command(), "serve"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, self.output()
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.1)

    def output(self) -> str:
        return self.proc.stdout.read() if self.proc.stdout else ""

    def stop(self) -> tuple[int, float, str]:
        """SIGTERM; (exit status, seconds to exit, log)."""
        self.client.close()
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        output, _ = self.proc.communicate(timeout=60)
        return self.proc.returncode, time.monotonic() - started, output


@contextmanager
def service(jobs_dir: Path) -> Iterator[Service]:
    running = Service(jobs_dir)
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.communicate()


def collect_stream(url: str, job_id: str) -> list[Event]:
    """Every event of one connection, until the server ends it."""
    with httpx.Client(base_url=url, timeout=60) as client:
        return list(stream(client, f"/jobs/{job_id}/events"))


def wait_for(client: httpx.Client, job_id: str, statuses: set[str],
             timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_restart_with_jobs_in_every_state_loses_none(tmp_path: Path,
                                                     real_catalog: object) -> None:
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    unrelated = jobs_dir / "notes.txt"  # start-up must never delete what it did not create
    unrelated.write_text("mine")
    with service(jobs_dir) as first:
        c = first.client
        done = c.post("/stylize", **upload(size=32, steps=2)).json()["id"]
        wait_for(c, done, {"succeeded"})
        result = c.get(f"/jobs/{done}/result").content
        failed = c.post("/stylize", **upload(size=32, steps=3, style_weight=1e38)).json()["id"]
        assert wait_for(c, failed, {"failed"})["error"]["type"].endswith("diverged")
        canceled = c.post("/stylize", **upload(size=48, steps=2000)).json()["id"]
        wait_for(c, canceled, {"running"})
        assert c.delete(f"/jobs/{canceled}").json()["status"] == "canceled"
        running = c.post("/stylize", **upload(size=48, steps=60)).json()["id"]
        queued = c.post("/stylize", **upload(size=32, steps=40)).json()["id"]
        wait_for(c, running, {"running"})
        follower = concurrent.futures.ThreadPoolExecutor(1).submit(
            collect_stream, first.url, running)
        time.sleep(0.3)  # the follower is connected
        status, seconds, log = first.stop()
        events = follower.result(timeout=30)
    print(f"SIGTERM with a running job: exit {status} after {seconds:.2f} s (grace {GRACE_S} s)")
    assert status == 0, log
    assert seconds < GRACE_S + 8, log
    assert events[-1].event == "interrupted", [e.event for e in events]
    assert '"msg": "stopped"' in log

    with service(jobs_dir) as second:
        c = second.client
        assert c.get(f"/jobs/{done}").json()["status"] == "succeeded"
        assert c.get(f"/jobs/{done}/result").content == result
        assert c.get(f"/jobs/{failed}").json()["status"] == "failed"
        assert c.get(f"/jobs/{canceled}").json()["status"] == "canceled"
        for job_id in (running, queued):
            job = wait_for(c, job_id, {"succeeded", "failed"})
            assert job["status"] == "succeeded", job
            assert c.get(f"/jobs/{job_id}/result").status_code == 200
        status, _, log = second.stop()
    assert status == 0, log
    assert unrelated.read_text() == "mine"


def test_a_stop_with_jobs_failing_when_configured(tmp_path: Path, real_catalog: object,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    jobs_dir = tmp_path / "jobs"
    with service(jobs_dir) as first:
        queued = first.client.post("/stylize", **upload(size=48, steps=2000)).json()["id"]
        wait_for(first.client, queued, {"running"})
        first.stop()
    monkeypatch.setenv("ATELIER_INTERRUPTED_JOBS", "fail")
    with service(jobs_dir) as second:
        job = second.client.get(f"/jobs/{queued}").json()
        assert job["status"] == "failed"
        assert job["error"]["type"].endswith("interrupted")
        second.stop()
