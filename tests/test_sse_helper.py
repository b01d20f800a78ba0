"""The tests' SSE client (tests/sse.py): ids kept, reconnection with Last-Event-ID."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.sse import Event, StreamEnded, StreamRefused, aread_events, read_events

EVENTS: list[tuple[int, str, dict[str, object]]] = [
    (1, "progress", {"step": 1}), (2, "preview", {"step": 1, "data_url": "data:,"}),
    (3, "progress", {"step": 2}), (4, "succeeded", {"status": "succeeded"}),
]


def wire(events: list[tuple[int, str, dict[str, object]]]) -> bytes:
    return b"".join(
        b": ping\n\n" + f"event: {kind}\ndata: {json.dumps(data)}\nid: {i}\n\n".encode()
        for i, kind, data in events)


class Broken(httpx.SyncByteStream):
    """A body that sends some events, then the connection drops."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset")


class Server:
    """Serves EVENTS after the request's Last-Event-ID, `per_connection` at a time."""

    def __init__(self, per_connection: int, *, drop: bool = False) -> None:
        self.per_connection = per_connection
        self.drop = drop
        self.asked: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        self.asked.append(last)
        assert request.headers["accept"] == "text/event-stream"
        after = int(last) if last else 0
        batch = [e for e in EVENTS if e[0] > after][: self.per_connection]
        headers = {"content-type": "text/event-stream"}
        if self.drop:
            return httpx.Response(200, headers=headers, stream=Broken(wire(batch)))
        return httpx.Response(200, headers=headers, content=wire(batch))


def client(server: Server) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(server), base_url="http://test")


def expected(after: int = 0) -> list[Event]:
    return [Event(i, kind, data) for i, kind, data in EVENTS if i > after]


def test_one_stream_to_the_final_event_keeps_ids_and_decodes_data() -> None:
    server = Server(per_connection=10)
    with client(server) as http:
        assert read_events(http, "/events") == expected()
    assert server.asked == [None]


@pytest.mark.parametrize("drop", [False, True])
def test_a_stream_that_ends_early_is_resumed_from_the_last_id(drop: bool) -> None:
    server = Server(per_connection=2, drop=drop)
    with client(server) as http:
        assert read_events(http, "/events") == expected()
    assert server.asked == [None, "2"]


def test_a_resume_starts_after_the_given_id_and_limit_stops_early() -> None:
    server = Server(per_connection=10)
    with client(server) as http:
        first = read_events(http, "/events", limit=2)
        rest = read_events(http, "/events", last_event_id=first[-1].id)
    assert first == expected()[:2] and rest == expected(after=2)
    assert server.asked == [None, "2"]


def test_a_stream_that_never_ends_gives_up() -> None:
    server = Server(per_connection=0)
    with client(server) as http, pytest.raises(StreamEnded):
        read_events(http, "/events")
    assert server.asked == [None] * 4


def test_a_problem_instead_of_a_stream_is_refused() -> None:
    def not_found(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"status": 404},
                              headers={"content-type": "application/problem+json"})

    transport = httpx.MockTransport(not_found)
    with httpx.Client(transport=transport, base_url="http://t") as http, pytest.raises(
            StreamRefused) as refused:
        read_events(http, "/events")
    assert refused.value.response.json() == {"status": 404}


@pytest.mark.anyio
async def test_the_async_client_resumes_too() -> None:
    server = Server(per_connection=3)

    async def handler(request: httpx.Request) -> httpx.Response:
        return server(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                 base_url="http://test") as http:
        assert await aread_events(http, "/events") == expected()
        assert await aread_events(http, "/events", last_event_id=3) == expected(after=3)
    assert server.asked == [None, "3", "3"]


def test_an_interrupted_stream_is_followed_again_to_the_final_event() -> None:
    """`interrupted` ends a stream when the server stops; the job goes on after a restart."""
    history = [(1, "progress", {"step": 1}), (2, "interrupted", {"status": "queued"}),
               (3, "progress", {"step": 0}), (4, "succeeded", {"status": "succeeded"})]
    asked: list[str | None] = []

    def restarting(request: httpx.Request) -> httpx.Response:
        last = request.headers.get("last-event-id")
        asked.append(last)
        after = int(last) if last else 0
        upto = 2 if after < 2 else 4  # the first process stops after `interrupted`
        batch = [e for e in history if after < e[0] <= upto]
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=wire(batch))

    with httpx.Client(transport=httpx.MockTransport(restarting), base_url="http://t") as http:
        events = read_events(http, "/events")
    assert [(e.id, e.event) for e in events] == [(i, kind) for i, kind, _ in history]
    assert asked == [None, "2"]
