"""Backpressure, deadlines, disconnects and worker faults, over real HTTP.

The app is the real one; only the device executor is scripted so that a test can hold the
worker busy or make it fail at a chosen moment.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pytest
import torch

from app.main import create_app
from app.pool import WorkItem
from tests.conftest import FakeExecutor, LiveServer, make_settings, wait_until

PROBLEM = "application/problem+json"


class ImageExecutor(FakeExecutor):
    """Answers GenerateWork with grey images, so the HTTP layer can encode them."""

    def run(self, batch: Sequence[WorkItem], max_images: int) -> list[Any]:
        super().run(batch, max_images)
        return [torch.full((w.size, 64, 64, 3), 128, dtype=torch.uint8) for w in batch]


@pytest.fixture
def scripted(real_catalog: object) -> Iterator[tuple[LiveServer, ImageExecutor]]:
    executor = ImageExecutor()
    settings = make_settings(queue_size=2, batch_wait_ms=0, retry_after_s=3)
    with LiveServer(create_app(settings, executor_factory=lambda _d: executor)) as server:
        yield server, executor
        executor.gate.set()


def post_in_background(server: LiveServer, body: dict[str, Any],
                       threads: concurrent.futures.ThreadPoolExecutor,
                       **kwargs: Any) -> concurrent.futures.Future[httpx.Response]:
    return threads.submit(httpx.post, f"{server.url}/generate", json=body, timeout=30,
                          **kwargs)


def test_a_full_queue_answers_503_with_retry_after_at_once(
    scripted: tuple[LiveServer, ImageExecutor],
) -> None:
    server, executor = scripted
    executor.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(2) as threads:
        held = [post_in_background(server, {"seed": i}, threads) for i in range(2)]
        wait_until(lambda: server.app.state.pool.schedulers['generate'].in_flight == 2)
        t0 = time.monotonic()
        refused = httpx.post(f"{server.url}/generate", json={"seed": 9}, timeout=30)
        elapsed = time.monotonic() - t0
        executor.gate.set()
        assert all(f.result().status_code == 200 for f in held)
    assert refused.status_code == 503 and elapsed < 1
    assert refused.headers["content-type"] == PROBLEM
    assert refused.headers["retry-after"] == "3"
    assert refused.json()["type"].endswith("queue-full")


def test_a_request_past_its_deadline_gets_504_and_is_never_computed(
    scripted: tuple[LiveServer, ImageExecutor],
) -> None:
    server, executor = scripted
    executor.gate.clear()
    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        blocker = post_in_background(server, {"seed": 1}, threads)
        executor.started.wait(5)
        late = httpx.post(f"{server.url}/generate", json={"seed": 2, "n": 3},
                          headers={"x-request-timeout": "0.2"}, timeout=30)
        executor.gate.set()
        assert blocker.result().status_code == 200
    assert late.status_code == 504 and late.headers["content-type"] == PROBLEM
    wait_until(lambda: server.app.state.pool.schedulers['generate'].in_flight == 0)
    assert [w.size for w in executor.computed] == [1]  # only the blocker ran


def test_work_of_a_client_that_hung_up_is_dropped_uncomputed(
    scripted: tuple[LiveServer, ImageExecutor],
) -> None:
    server, executor = scripted
    executor.gate.clear()
    pool = server.app.state.pool
    scheduler = pool.schedulers["generate"]
    with concurrent.futures.ThreadPoolExecutor(1) as threads:
        blocker = post_in_background(server, {"seed": 1}, threads)
        executor.started.wait(5)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/generate", json={"seed": 2, "n": 5}, timeout=0.3)
        # the server notices the hang-up and frees the queue slot before any worker is free
        wait_until(lambda: pool.metrics.dropped.labels("generate", "cancelled")._value.get() == 1)
        assert scheduler.in_flight == 1
        executor.gate.set()
        assert blocker.result().status_code == 200
    wait_until(lambda: scheduler.in_flight == 0)
    assert [w.size for w in executor.computed] == [1]
    assert pool.metrics.dropped.labels("generate", "cancelled")._value.get() == 1


def test_a_failing_batch_gives_a_clean_500_and_the_service_goes_on(
    scripted: tuple[LiveServer, ImageExecutor],
) -> None:
    server, executor = scripted

    def explode(batch: Sequence[WorkItem], max_images: int) -> None:
        raise RuntimeError("cuDNN exploded (simulated)")

    executor.behaviour = explode
    failed = httpx.post(f"{server.url}/generate", json={"seed": 1}, timeout=30)
    executor.behaviour = None
    ok = httpx.post(f"{server.url}/generate", json={"seed": 1}, timeout=30)
    assert failed.status_code == 500 and failed.headers["content-type"] == PROBLEM
    assert failed.json()["title"] == "Internal error"
    assert "cuDNN" not in failed.text  # internals stay in the server log
    assert ok.status_code == 200


def test_readiness_fails_while_a_worker_is_dead(
    scripted: tuple[LiveServer, ImageExecutor],
) -> None:
    server, _executor = scripted
    worker = server.app.state.pool.workers[0]
    assert worker.alive
    worker.loaded.clear()  # what a worker looks like before it has loaded its models
    try:
        response = httpx.get(f"{server.url}/readyz", timeout=5)
        assert response.status_code == 503
        assert response.headers["content-type"] == PROBLEM
        assert "not alive" in response.json()["detail"]
    finally:
        worker.loaded.set()
    assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200


def test_raw_socket_hangup_mid_request_does_not_disturb_the_server(
    scripted: tuple[LiveServer, ImageExecutor],
) -> None:
    server, _executor = scripted
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{")
    assert httpx.post(f"{server.url}/generate", json={}, timeout=30).status_code == 200
