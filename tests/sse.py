"""The one SSE client of the tests (on httpx-sse): keeps event ids, resumes with Last-Event-ID.

`follow` reads a job's event stream up to its final event; when a connection ends or breaks
before that, it reconnects with `Last-Event-ID` set to the last id it saw, as an
`EventSource` does, so no event is lost or repeated. `read_events` collects them (or the
first `limit`, closing the connection there, to resume later from the last id).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, Generator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

# `interrupted` (the server stopped; the job is re-queued) is not final: the stream is
# followed again, with Last-Event-ID, as a browser's EventSource would.
FINAL_EVENTS = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Event:
    id: int
    event: str
    data: Any  # the decoded JSON

    @property
    def final(self) -> bool:
        return self.event in FINAL_EVENTS


class StreamRefused(AssertionError):
    """The server answered the events request with something other than an event stream."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"{response.status_code} {response.headers.get('content-type')}")
        self.response = response


class StreamEnded(AssertionError):
    """The stream kept ending before a final event, reconnections included."""


def _dispatched(sse: ServerSentEvent) -> bool:
    """httpx-sse yields an empty event at the blank line after a comment (`: ping`) once an
    id has been seen; the SSE spec dispatches nothing when the data buffer is empty."""
    return sse.data != ""


def _event(sse: ServerSentEvent) -> Event:
    assert sse.id, f"event {sse.event!r} came without an id"
    return Event(id=int(sse.id), event=sse.event, data=json.loads(sse.data))


def _headers(last_event_id: int | str | None) -> dict[str, str]:
    return {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}


def _check(response: httpx.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if response.status_code != 200 or not content_type.startswith("text/event-stream"):
        raise StreamRefused(response)


def stream(client: httpx.Client, url: str, *, last_event_id: int | str | None = None
           ) -> Iterator[Event]:
    """The events of one connection, as they come."""
    with connect_sse(client, "GET", url, headers=_headers(last_event_id)) as source:
        if source.response.status_code != 200:
            source.response.read()
        _check(source.response)
        for sse in source.iter_sse():
            if _dispatched(sse):
                yield _event(sse)


def follow(client: httpx.Client, url: str, *, last_event_id: int | str | None = None,
           reconnects: int = 3) -> Generator[Event, None, None]:
    """Events up to and including the final one, reconnecting with Last-Event-ID."""
    last = last_event_id
    for attempt in range(reconnects + 1):
        try:
            for event in stream(client, url, last_event_id=last):
                last = event.id
                yield event
                if event.final:
                    return
        except httpx.TransportError:
            if attempt == reconnects:
                raise
    raise StreamEnded(f"{url}: no final event after {reconnects} reconnections")


def read_events(client: httpx.Client, url: str, *, last_event_id: int | str | None = None,
                limit: int | None = None) -> list[Event]:
    """The events up to the final one, or the first `limit` (then the connection closes)."""
    events: list[Event] = []
    with contextlib.closing(follow(client, url, last_event_id=last_event_id)) as source:
        for event in source:
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    return events


async def astream(client: httpx.AsyncClient, url: str, *,
                  last_event_id: int | str | None = None) -> AsyncGenerator[Event, None]:
    async with aconnect_sse(client, "GET", url, headers=_headers(last_event_id)) as source:
        if source.response.status_code != 200:
            await source.response.aread()
        _check(source.response)
        async for sse in source.aiter_sse():
            if _dispatched(sse):
                yield _event(sse)


async def afollow(client: httpx.AsyncClient, url: str, *,
                  last_event_id: int | str | None = None, reconnects: int = 3
                  ) -> AsyncGenerator[Event, None]:
    last = last_event_id
    for attempt in range(reconnects + 1):
        try:
            events = astream(client, url, last_event_id=last)
            try:
                async for event in events:
                    last = event.id
                    yield event
                    if event.final:
                        return
            finally:
                await events.aclose()
        except httpx.TransportError:
            if attempt == reconnects:
                raise
    raise StreamEnded(f"{url}: no final event after {reconnects} reconnections")


async def aread_events(client: httpx.AsyncClient, url: str, *,
                       last_event_id: int | str | None = None, limit: int | None = None
                       ) -> list[Event]:
    events: list[Event] = []
    source = afollow(client, url, last_event_id=last_event_id)
    try:
        async for event in source:
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
    finally:
        await source.aclose()
    return events
