"""Refuse request bodies over a size limit while they are read (pure ASGI)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import PROBLEM_JSON, HttpProblem, problem_bytes


class _TooLarge(HTTPException):
    """An HTTPException, so that body parsers re-raise it and the app's handler answers."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"the request body exceeds {max_bytes} bytes")


DRAIN_FACTOR = 4


async def _drain(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


class BodySizeLimit:
    """413 problem+json for bodies over `max_bytes` on the given path prefixes.

    Several instances may be stacked, one per limit.

    A declared Content-Length over the limit is refused before a byte is read; a chunked or
    lying body is cut off as soon as the running total passes the limit.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int, paths: tuple[str, ...]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                if int(value) <= self.max_bytes * DRAIN_FACTOR:
                    # Browsers cannot stop an upload to read an early answer: a modest
                    # excess is read and thrown away so that they see the 413, not a reset.
                    await _drain(receive)
                await self._refuse(scope, send)
                return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        error = HttpProblem(413, f"the request body exceeds {self.max_bytes} bytes")
        request_id = scope.get("state", {}).get("request_id")
        body = problem_bytes(error, scope["path"], request_id)
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]})
        await send({"type": "http.response.body", "body": body})
