"""Run request work, abandoning it when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


async def _cancel_on_disconnect(request: Request, task: asyncio.Task[Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


# Most requests are answered within milliseconds, and a watcher task for each costs ~9 µs
# of the ~170 a /generate request costs in all (bench/RESULTS.md); one starts only once a
# request has waited this long. A client that hung up sooner is noticed then: its
# disconnect message waits in the server's receive queue.
WATCH_AFTER_S = 0.02


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await `work`; cancel it (so queued items are dropped uncomputed) if the client leaves.

    Raises ClientDisconnected then; errors of `work` propagate unchanged.

    `work` runs in the caller's task, which a watcher task cancels when the disconnect
    arrives; the watcher starts `WATCH_AFTER_S` after the call (a timer until then).
    """
    loop = asyncio.get_running_loop()
    current = asyncio.current_task()
    assert current is not None, "called outside a task"
    watcher: asyncio.Task[None] | None = None

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_cancel_on_disconnect(request, current))

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if (watcher is None or not watcher.done() or watcher.cancelled()
                or watcher.exception() is not None):
            raise  # cancelled by someone else: the server is stopping, say
        current.uncancel()  # the watcher's cancellation ends here
        raise ClientDisconnected() from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
