"""Refuse a multipart body cut short (pure ASGI).

A multipart/form-data body ends with its closing delimiter, `--<boundary>--`. The form
parser (python-multipart) drops a last part that never ended without a word, so a body cut
off by a client or a proxy mid-upload became a different job: a form field back to its
default, a style image fewer. This layer checks that the closing delimiter arrived before the
body's end, and refuses the request otherwise (400 problem+json, through the app's handler).
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Bytes kept from the end of the body: the closing delimiter and what may follow it (a line
# break; RFC 2046 allows an epilogue, which clients do not send).
_TAIL_SLACK = 1024


class _CutShort(HTTPException):
    """FastAPI's HTTPException: the route's body parsing passes it on as it is."""

    def __init__(self) -> None:
        super().__init__(400, "the multipart body ended before its closing boundary: the"
                              " upload was cut short")


def _boundary(scope: Scope) -> bytes | None:
    value: bytes
    for key, value in scope.get("headers", []):
        if key == b"content-type":
            media, _, params = value.partition(b";")
            if media.strip().lower() != b"multipart/form-data":
                return None
            for param in params.split(b";"):
                name, _, raw = param.strip().partition(b"=")
                if name.lower() == b"boundary" and raw:
                    boundary: bytes = raw.strip(b'"')
                    return boundary
            return None
    return None


class WholeMultipart:
    """400 for a multipart/form-data body on `paths` whose closing delimiter never came."""

    def __init__(self, app: ASGIApp, *, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        boundary = _boundary(scope)
        if boundary is None:  # not multipart: the form parser refuses it, or it is not a form
            await self.app(scope, receive, send)
            return
        closing = b"--" + boundary + b"--"
        keep = len(closing) + _TAIL_SLACK
        tail = b""

        async def checked_receive() -> Message:
            nonlocal tail
            message = await receive()
            if message["type"] == "http.request":
                # Only the end of each chunk: an upload is not copied again, chunk by chunk.
                tail = (tail + message.get("body", b"")[-keep:])[-keep:]
                if not message.get("more_body", False) and closing not in tail:
                    raise _CutShort()
            return message

        await self.app(scope, checked_receive, send)
