"""`BodySizeLimit`, driven as an ASGI app with scripted receive/send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from app.api.limits import BodySizeLimit

LIMIT = 1000


class Inner:
    """An app that reads the whole body, then answers 200 with its length."""

    def __init__(self) -> None:
        self.calls = 0
        self.body = b""
        self.received: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        while True:
            message = await receive()
            self.received.append(message)
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-inner", b"yes")]})
        await send({"type": "http.response.body", "body": str(len(self.body)).encode()})


class Client:
    """Scripted request messages; records what is read and what is sent back."""

    def __init__(self, chunks: list[bytes], *, declared: int | None = None,
                 path: str = "/stylize", request_id: str | None = None) -> None:
        headers = [(b"content-type", b"multipart/form-data; boundary=x")]
        if declared is not None:
            headers.append((b"content-length", str(declared).encode()))
        self.scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path,
                                      "headers": headers}
        if request_id is not None:
            self.scope["state"] = {"request_id": request_id}
        self.messages: list[Message] = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        self.reads = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.reads >= len(self.messages):
            await asyncio.sleep(3600)  # a client that sends nothing more
        self.reads += 1
        return self.messages[self.reads - 1]

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def call(self, app: BodySizeLimit) -> None:
        asyncio.run(asyncio.wait_for(app(self.scope, self.receive, self.send), 5))

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent[1:])


def limited(inner: Inner) -> BodySizeLimit:
    return BodySizeLimit(inner, max_bytes=LIMIT, paths=("/stylize",))


def assert_413(client: Client, path: str = "/stylize") -> dict[str, Any]:
    assert client.status == 413
    headers = client.headers
    assert headers[b"content-type"] == b"application/problem+json"
    assert headers[b"connection"] == b"close"
    assert int(headers[b"content-length"]) == len(client.body)
    problem: dict[str, Any] = json.loads(client.body)
    assert problem["status"] == 413 and problem["instance"] == path
    assert str(LIMIT) in problem["detail"]
    return problem


def test_a_declared_length_over_the_limit_is_refused_before_the_app_runs() -> None:
    inner = Inner()
    client = Client([b"x" * 3000], declared=3000, request_id="rid-7")
    client.call(limited(inner))
    assert inner.calls == 0
    assert assert_413(client)["request_id"] == "rid-7"
    # a modest excess is read and thrown away, so that a browser sees the answer
    assert client.reads == 1


def test_a_declared_length_far_over_the_limit_is_not_read_at_all() -> None:
    inner = Inner()
    client = Client([b"x" * 100, b"x" * 100], declared=LIMIT * 100)
    client.call(limited(inner))
    assert inner.calls == 0 and client.reads == 0
    problem = assert_413(client)
    assert "request_id" not in problem


def test_a_chunked_body_is_cut_off_once_over_the_limit() -> None:
    inner = Inner()
    chunks = [b"x" * 400] * 10  # 4000 bytes, no Content-Length
    client = Client(chunks)
    client.call(limited(inner))
    assert inner.calls == 1
    assert client.reads == 3  # 1200 bytes: the third chunk passes the limit, no more is read
    assert len(inner.body) == 800  # the app never saw the chunk that passed it
    assert_413(client)
    assert b"x-inner" not in client.headers


def test_a_body_that_lies_about_its_length_is_cut_off_too() -> None:
    inner = Inner()
    client = Client([b"x" * 600, b"x" * 600, b"x" * 600], declared=500)
    client.call(limited(inner))
    assert client.reads == 2
    assert_413(client)


def test_a_body_under_or_at_the_limit_passes_through_untouched() -> None:
    for chunks, declared in (([b"a" * 300, b"b" * 300], 600), ([b"c" * LIMIT], LIMIT),
                             ([b"d" * 500, b"e" * 500], None)):
        inner = Inner()
        client = Client(chunks, declared=declared)
        client.call(limited(inner))
        assert inner.calls == 1
        assert inner.received == client.messages  # the same messages, in order
        assert inner.body == b"".join(chunks)
        assert client.sent == [
            {"type": "http.response.start", "status": 200, "headers": [(b"x-inner", b"yes")]},
            {"type": "http.response.body", "body": str(len(inner.body)).encode()},
        ]


def test_other_paths_and_other_scopes_are_not_limited() -> None:
    inner = Inner()
    client = Client([b"x" * 3000], declared=3000, path="/generate")
    client.call(limited(inner))
    assert inner.calls == 1 and client.status == 200 and inner.body == b"x" * 3000

    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def drop(message: Message) -> None:
        pass

    app = BodySizeLimit(lifespan_app, max_bytes=1, paths=("/",))
    asyncio.run(app({"type": "lifespan"}, nothing, drop))
    assert seen == ["lifespan"]


def test_a_response_already_started_is_not_followed_by_a_413() -> None:
    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while (await receive()).get("more_body", False):
            pass

    client = Client([b"x" * 600] * 3)
    client.call(BodySizeLimit(streaming, max_bytes=LIMIT, paths=("/stylize",)))
    assert [m["type"] for m in client.sent] == ["http.response.start"]
    assert client.status == 200
