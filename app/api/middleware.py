"""Request ids, one structured access-log line per request, and HTTP metrics (pure ASGI)."""

from __future__ import annotations

import logging
import random
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("atelier.access")


def new_request_id() -> str:
    """32 random hex digits, as `uuid4().hex` gives, at a tenth of its cost (no system
    call): an id correlates log lines; it is no secret and grants nothing. `random`'s
    generator is seeded from the OS and re-seeded in forked children."""
    return f"{random.getrandbits(128):032x}"


class AccessLog:
    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "atelier_http_requests_total", "HTTP requests answered.",
            ["method", "route", "status"], registry=registry,
        )
        self.latency = Histogram(
            "atelier_http_request_seconds", "HTTP request latency.", ["method", "route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        # The metric children of each (method, route, status) seen, bound once: `labels()`
        # costs a lock and a dict look-up per call. Routes are templates, so this stays small.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def _observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(elapsed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _header(scope, b"x-request-id") or new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []), (b"x-request-id", request_id.encode())
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self._observe(method, route, status, elapsed)
            if log.isEnabledFor(logging.INFO):
                fields: dict[str, Any] = {
                    "request_id": request_id, "method": method, "path": scope["path"],
                    "status": status, "duration_ms": round(elapsed * 1000, 2),
                    **state.get("log_fields", {}),
                }
                if state.get("principal"):  # the API key's id, never the key
                    fields["principal"] = state["principal"]
                log.info("request", extra={"fields": fields})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            text = value.decode("latin-1")[:128]
            return text if text.isprintable() else None
    return None


class HeadAsGet:
    """HEAD wherever GET is answered (RFC 9110 §9.3.2: load balancers check health with it):
    the app answers a GET and only the status and headers go out. (FastAPI routes answer
    only the methods they declare; uvicorn, whose scope still says HEAD, sends no body.)

    The answer ends as soon as its head is out: a streaming one (an event stream) is not
    followed to its end, its app sees the client leave."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = False

        async def head_only(message: Message) -> None:
            nonlocal answered
            if answered:
                return
            await send(message)
            if message["type"] == "http.response.start":
                answered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def gone_once_answered() -> Message:
            if answered:
                return {"type": "http.disconnect"}
            return await receive()

        await self.app({**scope, "method": "GET"}, gone_once_answered, head_only)
