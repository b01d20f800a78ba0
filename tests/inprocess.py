"""The app in the test's own event loop: `httpx.ASGITransport` + `LifespanManager`, with a
scripted runtime in place of the models. For tests whose point is not a fault of the wire
(those boot a real server: see `LiveServer`).

`ASGITransport` hands over a response once the app has finished it, so an event stream is
read after it ends (a job's stream ends with its final event).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.engines.style import Cancelled, Losses, Progress, StyleResult, output_shape
from app.main import create_app
from app.pool import WorkItem
from app.runtime import GenerateWork, StylizeWork
from app.settings import Settings
from tests.conftest import FakeExecutor

DATA = Path(__file__).parent / "data"
PROBLEM = "application/problem+json"


class StubRuntime(FakeExecutor):
    """Returns what `DeviceRuntime` returns, without models.

    GenerateWork: uint8 [n, 64, 64, 3] (grey, the seed's first image a shade of its own).
    StylizeWork: calls `on_start`, reports progress (and previews) on the real engine's
    schedule, and returns a `StyleResult` of the real output size. With `gate` cleared a
    style job waits before each step (running, cancellable); a generate batch waits before
    it starts. `behaviour` runs first and may raise (an Exception fails the batch; a
    BaseException kills the worker thread).
    """

    def run(self, batch: Sequence[WorkItem], max_images: int) -> list[Any]:
        self.started.set()
        self.max_images_seen.append(max_images)
        if self.behaviour is not None:
            self.behaviour(batch, max_images)
        self.batches.append(list(batch))
        self.computed.extend(batch)
        if isinstance(batch[0], StylizeWork):
            return self._stylize([w for w in batch if isinstance(w, StylizeWork)])
        self.gate.wait(30)
        return [self._images(w) for w in batch if isinstance(w, GenerateWork)]

    @staticmethod
    def _images(work: GenerateWork) -> torch.Tensor:
        shade = (work.latents[:, 0].abs() * 50).to(torch.uint8).view(-1, 1, 1, 1)
        return shade.expand(work.size, 64, 64, 3).contiguous()

    def _stylize(self, batch: list[StylizeWork]) -> list[StyleResult | Exception]:
        for work in batch:
            if work.on_start is not None:
                work.on_start()
        return [self._one(work) for work in batch]

    def _one(self, work: StylizeWork) -> StyleResult | Exception:
        options = work.options
        h, w = output_shape(work.content.shape, options.size)
        started = time.monotonic()
        losses = Losses(content=1.0, style=2.0, tv=0.5, total=3.5)
        for step in range(1, options.steps + 1):
            while not self.gate.wait(0.01):
                if work.cancel.is_set():
                    break
            if work.cancel.is_set():
                return Cancelled()
            last = step == options.steps
            losses = Losses(content=1.0, style=2.0 / step, tv=0.5, total=1.5 + 2.0 / step)
            report = last or step % max(1, options.progress_every) == 0
            preview = options.preview_every > 0 and (last or step % options.preview_every == 0)
            if (report or preview) and work.on_progress is not None:
                image = torch.full((8, 8, 3), step, dtype=torch.uint8) if preview else None
                work.on_progress(Progress(step, options.steps, losses, image))
        return StyleResult(image=torch.full((h, w, 3), 200, dtype=torch.uint8), losses=losses,
                           steps=options.steps, seconds=time.monotonic() - started)


@dataclass
class InProcess:
    app: FastAPI
    client: httpx.AsyncClient
    runtime: StubRuntime


@asynccontextmanager
async def in_process(settings: Settings, runtime: StubRuntime | None = None, *,
                     raise_app_exceptions: bool = True) -> AsyncIterator[InProcess]:
    """The app started (lifespan) with `runtime` on every device, and a client for it."""
    runtime = runtime or StubRuntime()
    app = create_app(settings, executor_factory=lambda _device: runtime)
    try:
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60) as manager:
            transport = httpx.ASGITransport(app=manager.app,
                                            raise_app_exceptions=raise_app_exceptions)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                                         timeout=30) as client:
                yield InProcess(app, client, runtime)
                runtime.gate.set()  # let held work finish before the pool shuts down
    finally:
        runtime.gate.set()


def upload(content: bytes | None = None, *styles: bytes) -> list[tuple[str, Any]]:
    """The multipart files of POST /stylize (the test images unless given)."""
    content = content if content is not None else (DATA / "content.jpg").read_bytes()
    styles = styles or ((DATA / "starry.jpg").read_bytes(),)
    return [("content", ("content.jpg", content, "image/jpeg"))] + [
        ("style", (f"style{i}.jpg", s, "image/jpeg")) for i, s in enumerate(styles)
    ]
