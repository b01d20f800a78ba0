"""Runs on a server: POST /generate, or POST /stylize as an async job whose event stream
drives the same progress handler as a local run. A dropped stream is resumed with
`Last-Event-ID`; Ctrl-C cancels the job (DELETE) before exiting."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from app.cli.errors import FAILED, INTERRUPTED, UNREACHABLE, USAGE, CliError, exit_code
from app.cli.report import Generated, JobProgress
from app.services.params import GenerateRequest, StyleParams

RECONNECTS = 5  # consecutive failed attempts to resume an event stream before giving up
BACKOFF_S = 0.25  # the first wait before reconnecting; doubled each time, at most 2 s
# After an `interrupted` event (the server stopped; the job is queued again for its next
# start), reconnecting goes on this long, whatever the number of attempts.
RESTART_WAIT_S = 120.0
# The server pings an idle event stream every 15 s: a minute of silence is a dead link.
EVENTS_TIMEOUT = httpx.Timeout(30.0, read=60.0)
REQUEST_TIMEOUT = httpx.Timeout(30.0, read=600.0)


@contextlib.contextmanager
def _client(server: str) -> Iterator[httpx.Client]:
    try:
        url = httpx.URL(server)
    except httpx.InvalidURL as exc:
        raise CliError(f"--server: {exc}", USAGE) from None
    if url.scheme not in ("http", "https") or not url.host:
        raise CliError(f"--server: expected an http:// or https:// URL, got {server!r}", USAGE)
    # A server with API keys on wants one (ATELIER_API_KEY, never a command-line argument,
    # which other users of the machine could read in the process list).
    key = os.environ.get("ATELIER_API_KEY", "").strip()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=server.rstrip("/"), timeout=REQUEST_TIMEOUT,
                      headers=headers) as client:
        yield client


def _refused(response: httpx.Response, code: int | None = None) -> CliError:
    """A problem+json answer as the message: title, detail, Retry-After. The exit code
    follows the status unless given (once a job is accepted, a refusal is a failure)."""
    response.read()
    try:
        problem = response.json()
        title, detail = problem.get("title"), problem.get("detail")
        message = ": ".join(str(part) for part in (title, detail) if part)
    except ValueError:
        message = response.reason_phrase
    message = f"the server answered {response.status_code}: {message or 'no detail'}"
    retry = response.headers.get("retry-after")
    if retry:
        message += f" (retry after {retry} s)"
    return CliError(message, exit_code(response.status_code) if code is None else code)


def _unreachable(client: httpx.Client, exc: httpx.TransportError) -> CliError:
    return CliError(f"cannot reach {client.base_url}: {exc or type(exc).__name__}",
                    UNREACHABLE)


def _send(
    client: httpx.Client, method: str, url: str, code: int | None = None, **kwargs: Any
) -> httpx.Response:
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise _unreachable(client, exc) from None
    if not response.is_success:
        raise _refused(response, code)
    return response


def generate(server: str, request: GenerateRequest) -> Generated:
    with _client(server) as client:
        response = _send(client, "POST", "/generate",
                         json=request.model_dump(mode="json", exclude_none=True))
    seed = int(response.headers.get("x-seed", "0"))
    return Generated(response.content, response.headers.get("x-model", ""),
                     [seed + i for i in range(request.n)])


def follow(
    client: httpx.Client, job_id: str, handle: Callable[[str, dict[str, Any]], Any]
) -> dict[str, Any]:
    """Feed the job's events to `handle` until it returns the final document; on a dropped
    stream, reconnect with `Last-Event-ID` (the server resumes after that event)."""
    last_id = ""
    failures = 0
    restart_deadline: float | None = None
    while True:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with connect_sse(client, "GET", f"/jobs/{job_id}/events", headers=headers,
                             timeout=EVENTS_TIMEOUT) as source:
                if not source.response.is_success:
                    raise _refused(source.response, FAILED)
                for event in source.iter_sse():
                    if not event.data:
                        # httpx-sse turns the server's `: ping` keep-alive comment into an
                        # empty message once an id has been seen: nothing to handle.
                        continue
                    last_id = event.id or last_id
                    failures = 0
                    restart_deadline = None
                    if event.event == "interrupted":
                        restart_deadline = time.monotonic() + RESTART_WAIT_S
                    document = handle(event.event, event.json())
                    if document is not None:
                        return dict(document)
            reason = "the stream ended before the job did"
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
        except SSEError as exc:
            raise CliError(f"unexpected answer to the event stream: {exc}", FAILED) from None
        failures += 1
        restarting = restart_deadline is not None and time.monotonic() < restart_deadline
        if failures > RECONNECTS and not restarting:
            raise CliError(f"lost the event stream of job {job_id} ({reason}); the job may "
                           f"still run: {client.base_url}/jobs/{job_id}", UNREACHABLE)
        time.sleep(min(BACKOFF_S * 2 ** (failures - 1), 2.0))


def _cancel(client: httpx.Client, job_id: str) -> None:
    try:
        client.delete(f"/jobs/{job_id}", timeout=15)
    except httpx.HTTPError as exc:
        print(f"warning: could not cancel job {job_id}: {exc}", file=sys.stderr)


def stylize(
    server: str, content: tuple[str, bytes], styles: list[tuple[str, bytes]],
    params: StyleParams, make_progress: Callable[[int], JobProgress],
) -> tuple[dict[str, Any], bytes]:
    """(the final job document, the encoded image)."""
    files = [("content", content)] + [("style", style) for style in styles]
    with _client(server) as client:
        accepted = _send(client, "POST", "/stylize", files=files, data=params.form_fields(),
                         headers={"Prefer": "respond-async"}).json()
        job_id = str(accepted["id"])
        try:
            progress = make_progress(int(accepted["steps"]))
            try:
                document = follow(client, job_id, progress)
            finally:
                progress.close()
            data = _send(client, "GET", f"/jobs/{job_id}/result", FAILED).content
        except KeyboardInterrupt:
            _cancel(client, job_id)
            raise CliError(f"interrupted; job {job_id} was cancelled", INTERRUPTED) from None
        return document, data
