from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
import torch
import uvicorn
from fastapi import FastAPI

from app.api import security
from app.catalog import Catalog, ModelStatus
from app.main import create_app
from app.pool import WorkItem
from app.settings import PROJECT_ROOT, Settings

if TYPE_CHECKING:
    from tests.redisserver import RedisServer

CATALOG_DIR = PROJECT_ROOT / "models"
MODEL_DIR = PROJECT_ROOT / "models" / "cache"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_catalog() -> Catalog:
    catalog = Catalog(CATALOG_DIR, MODEL_DIR)
    entry = catalog.entry("dcgan-faces-64")
    assert entry is not None and entry.status is ModelStatus.AVAILABLE, (
        "the default GAN is not pulled; run `make test` (it runs `atelier models pull`)"
    )
    return catalog


# Removed when the test process exits.
_JOBS_ROOT = tempfile.TemporaryDirectory(prefix="atelier-test-jobs-")


def make_settings(**overrides: Any) -> Settings:
    """Test settings; each call gets a fresh jobs dir (the job store is durable: a shared
    one would carry jobs from one test's server into the next)."""
    base: dict[str, Any] = {
        "devices": "cpu", "catalog_dir": CATALOG_DIR, "model_dir": MODEL_DIR,
        "log_format": "text", "log_level": "WARNING", "shutdown_grace_s": 5,
        "jobs_dir": Path(tempfile.mkdtemp(dir=_JOBS_ROOT.name)),
    }
    return Settings(**(base | overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on",
                                **security.uvicorn_options(app.state.settings))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def live(real_catalog: Catalog) -> Iterator[LiveServer]:
    """The real app, real weights, over real HTTP."""
    with LiveServer(create_app(make_settings())) as server:
        yield server


class FakeExecutor:
    """An executor whose behaviour a test scripts: records batches, can block or fail."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.batches: list[list[WorkItem]] = []
        self.computed: list[WorkItem] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.behaviour: Callable[[Sequence[WorkItem], int], None] | None = None
        self.max_images_seen: list[int] = []

    def load(self) -> None:
        pass

    def run(self, batch: Sequence[WorkItem], max_images: int) -> list[Any]:
        self.started.set()
        self.max_images_seen.append(max_images)
        self.gate.wait(30)
        if self.behaviour is not None:
            self.behaviour(batch, max_images)
        self.batches.append(list(batch))
        self.computed.extend(batch)
        return [getattr(item, "payload", None) for item in batch]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


@pytest.fixture
def tmp_model_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """`@pytest.mark.anyio` tests (in-process ones) run on asyncio, the server's loop."""
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the session (tests/redisserver.py, which imports this
    module: hence the import here)."""
    from tests.redisserver import RedisServer, require

    require()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
    return redis_server.url
