"""Running the app under uvicorn with one grace period for everything.

Plain uvicorn on SIGTERM waits up to its own timeout for open connections (SSE streams of
running jobs never close by themselves), then runs the app's shutdown, which waits again
for the work: twice the grace, streams cut without a final event, exit status 143. Here the
app drains first, within `ATELIER_SHUTDOWN_GRACE_S`: running jobs finish or go back to the
queue, every stream gets its final event and closes, and then uvicorn closes what is left.
"""

from __future__ import annotations

import gc
import socket
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.api import security
from app.main import create_app
from app.settings import Settings

# Seconds uvicorn still waits for connections after the app has drained: enough to flush
# the final events and answers already being written.
_AFTER_DRAIN_S = 5


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # stop accepting before draining
            server.close()
        if not self.force_exit:
            await self._drain()
        await super().shutdown(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the app's start-up (lifespan) has run
        tune_garbage_collector()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # A requested stop that drains cleanly exits 0; uvicorn would re-raise the signal
        # after shutdown (exit 143). A second signal still forces the exit at once.
        self._captured_signals.clear()


# Allocations (net of frees) of container objects between two young-generation collections;
# CPython's default is 700.
YOUNG_COLLECTION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Once start-up is done: freeze what it built and collect young objects less often.

    The process holds a few hundred thousand long-lived objects (torch, the models, the
    app) and every full collection walked all of them, ~0.1 s each, set off every few
    thousand requests. `gc.freeze` exempts them from collection for good (the garbage
    start-up left is collected first; a frozen object that later ends up in a reference
    cycle is never reclaimed, reference counting frees the rest). And with dozens of
    requests in flight the count of live objects swings by more than the default 700,
    setting off a young collection every few requests that walks every in-flight object,
    although nearly all of them are freed by reference counting.

    Together about 200 µs of CPU per /generate request (bench/generate.py, null
    generator, concurrency 64): more than the rest of the app.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


def server_for(app: FastAPI, settings: Settings, **options: Any) -> Server:
    """A uvicorn server for `app` whose shutdown drains it (see the module's docstring)."""
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port,
        access_log=False,  # the app writes one structured line per request itself
        timeout_graceful_shutdown=_AFTER_DRAIN_S,
        log_level=settings.log_level.lower(),
        **{**security.uvicorn_options(settings), **options},
    )

    async def drain() -> None:
        stylize = getattr(app.state, "stylize", None)
        if stylize is not None:
            await stylize.drain(settings.shutdown_grace_s)

    return Server(config, drain)


def serve(settings: Settings) -> None:
    """`atelier serve`: serve the app until SIGINT/SIGTERM, then drain and exit."""
    server_for(create_app(settings), settings).run()
