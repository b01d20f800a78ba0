"""Running the app under uvicorn with one grace period for everything.

Plain uvicorn on SIGTERM waits up to its own timeout for open connections (SSE streams of
running jobs never close by themselves), then runs the app's shutdown, which waits again
for the work: twice the grace, streams cut without a final event, exit status 143. Here the
app drains first, within `ATELIER_SHUTDOWN_GRACE_S`: running jobs finish or go back to the
queue, every stream gets its final event and closes, and then uvicorn closes what is left.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from app.api import security
from app.main import create_app
from app.process import tune_garbage_collector
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
