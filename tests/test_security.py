"""Who may call the API and from where: Host check, cross-site refusal, CORS, the header
limit (over real sockets) and API keys. See app/api/security.py."""

from __future__ import annotations

import hashlib
import json
import logging
import select
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from app.api import security
from app.main import create_app
from app.settings import Settings
from tests.conftest import LiveServer, make_settings
from tests.inprocess import PROBLEM, InProcess, StubRuntime, in_process, upload

OWN = "http://127.0.0.1:8000"  # the in-process client's base URL, so the server's own origin
EVIL = "https://evil.example"
KEY, OTHER_KEY = "k1-Secret_value.0123456789", "k2-another-key"


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(jobs_dir=tmp_path / "jobs", default_size=32, default_steps=2,
                         shutdown_grace_s=1, **overrides)


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"] == f"urn:atelier:problem:{slug}"
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[InProcess]:
    """Defaults: hosts `auto` on a loopback bind, no CORS, no keys."""
    async with in_process(settings(tmp_path)) as running:
        yield running


# ---- Host ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_foreign_host_is_a_400_problem_and_loopback_names_pass(app: InProcess) -> None:
    refused = await app.client.get("/healthz", headers={"host": "evil.example"})
    assert "evil.example" in assert_problem(refused, 400, "host-not-allowed")["detail"]
    rebound = await app.client.post("/generate", json={"seed": 1},
                                     headers={"host": "attacker.example:8000"})
    assert_problem(rebound, 400, "host-not-allowed")
    assert app.runtime.computed == []
    for host in ("127.0.0.1:8000", "localhost", "LOCALHOST:9", "[::1]:8000", "127.0.0.1"):
        assert (await app.client.get("/healthz", headers={"host": host})).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize(("overrides", "host", "status"), [
    ({"allowed_hosts": "*"}, "evil.example", 200),
    ({"host": "0.0.0.0"}, "anything.example:1234", 200),  # auto, not on loopback: any
    ({"allowed_hosts": "atelier.example.com, *.corp.example"}, "atelier.example.com:8443",
     200),
    ({"allowed_hosts": "atelier.example.com, *.corp.example"}, "gpu.corp.example", 200),
    ({"allowed_hosts": "atelier.example.com, *.corp.example"}, "127.0.0.1:8000", 400),
    ({"allowed_hosts": "atelier.example.com:8443"}, "atelier.example.com:8000", 400),
])
async def test_allowed_hosts_setting(tmp_path: Path, overrides: dict[str, str], host: str,
                                     status: int) -> None:
    async with in_process(settings(tmp_path, **overrides)) as running:
        response = await running.client.get("/healthz", headers={"host": host})
    assert response.status_code == status


# ---- cross-site requests ------------------------------------------------------------------


@pytest.mark.anyio
async def test_cross_site_generate_and_stylize_are_refused_and_nothing_runs(
    app: InProcess,
) -> None:
    generate = await app.client.post("/generate", json={"seed": 1}, headers={"origin": EVIL})
    stylize = await app.client.post("/stylize", files=upload(),
                                    headers={"origin": EVIL, "prefer": "respond-async"})
    null = await app.client.post("/generate", json={}, headers={"origin": "null"})
    for response in (generate, stylize, null):
        assert_problem(response, 403, "cross-site-request")
        assert "access-control-allow-origin" not in response.headers
    assert app.runtime.computed == [] and app.runtime.batches == []
    assert len(app.app.state.stylize.store) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [
    {"origin": OWN},
    {"origin": OWN, "sec-fetch-site": "same-origin"},
    {"sec-fetch-site": "same-origin"},
    {"sec-fetch-site": "none"},  # typed into the address bar
    {},  # curl, scripts
])
async def test_same_origin_and_non_browser_posts_pass(app: InProcess,
                                                      headers: dict[str, str]) -> None:
    response = await app.client.post("/generate", json={"seed": 1}, headers=headers)
    assert response.status_code == 200, response.text
    assert len(app.runtime.computed) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("headers", [
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
    {"origin": "https://other.127.0.0.1.example", "sec-fetch-site": "same-site"},
    {"origin": OWN, "sec-fetch-site": "cross-site"},
    {"origin": "http://127.0.0.1:8001"},  # another port is another origin
    {"origin": "https://127.0.0.1:8000"},  # and so is another scheme
])
async def test_browser_requests_from_other_sites_are_refused(app: InProcess,
                                                             headers: dict[str, str]) -> None:
    response = await app.client.delete("/jobs/0123456789abcdef", headers=headers)
    assert_problem(response, 403, "cross-site-request")
    posted = await app.client.post("/generate", json={}, headers=headers)
    assert_problem(posted, 403, "cross-site-request")
    assert app.runtime.computed == []


@pytest.mark.anyio
async def test_gets_stay_open_to_other_sites_without_cors_headers(app: InProcess) -> None:
    response = await app.client.get("/models", headers={"origin": EVIL,
                                                        "sec-fetch-site": "cross-site"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    page = await app.client.get("/", headers={"sec-fetch-site": "cross-site"})
    assert page.status_code == 200


# ---- CORS ---------------------------------------------------------------------------------


def preflight(origin: str, method: str = "POST",
              headers: str = "content-type, authorization") -> dict[str, str]:
    return {"origin": origin, "access-control-request-method": method,
            "access-control-request-headers": headers}


@pytest.mark.anyio
async def test_cors_answers_preflights_only_for_configured_origins(tmp_path: Path) -> None:
    app_origin = "https://studio.example"
    async with in_process(settings(tmp_path, cors_origins=f"{app_origin}/,"
                                   " https://other.example:8443")) as running:
        client = running.client
        allowed = await client.options("/generate", headers=preflight(app_origin))
        evil = await client.options("/generate", headers=preflight(EVIL))
        bad_header = await client.options("/generate",
                                          headers=preflight(app_origin, headers="x-api-key"))
        posted = await client.post("/generate", json={"seed": 2}, headers={
            "origin": app_origin, "sec-fetch-site": "cross-site", "accept": "image/png"})
        foreign = await client.post("/generate", json={}, headers={"origin": EVIL})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == app_origin
    allow_headers = allowed.headers["access-control-allow-headers"].lower()
    for name in ("authorization", "prefer", "last-event-id", "x-request-timeout",
                 "content-type"):
        assert name in allow_headers
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert_problem(evil, 403, "cors-refused")
    assert "access-control-allow-origin" not in evil.headers
    assert_problem(bad_header, 403, "cors-refused")
    assert posted.status_code == 200
    assert posted.headers["access-control-allow-origin"] == app_origin
    exposed = posted.headers["access-control-expose-headers"].lower()
    for name in ("x-job-id", "x-seed", "x-model", "x-request-id", "location", "retry-after"):
        assert name in exposed
    assert_problem(foreign, 403, "cross-site-request")


@pytest.mark.anyio
async def test_without_cors_origins_no_preflight_succeeds(app: InProcess) -> None:
    response = await app.client.options("/generate", headers=preflight(EVIL))
    assert response.status_code >= 400
    assert response.headers["content-type"] == PROBLEM
    assert "access-control-allow-origin" not in response.headers


# ---- the request head: 431 ----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_head_over_the_limit_is_a_431_problem_in_process(app: InProcess) -> None:
    response = await app.client.get("/healthz", headers={"x-big": "a" * 17_000})
    assert_problem(response, 431, "header-too-large")
    fine = await app.client.get("/healthz", headers={"x-fine": "a" * 15_000})
    assert fine.status_code == 200


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(data)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    return answer


def flood(port: int, total: int) -> tuple[int, bytes]:
    """Send an endless header value until the server answers; (bytes sent, answer)."""
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Flood: ")
        chunk = b"a" * 65536
        try:
            while sent < total and not select.select([raw], [], [], 0)[0]:
                raw.sendall(chunk)
                sent += len(chunk)
            while data := raw.recv(65536):
                answer += data
        except (BrokenPipeError, ConnectionResetError):
            pass
    return sent, answer


class GuardedServer(LiveServer):
    """LiveServer with the socket-level head limit of `security.uvicorn_options`."""

    def __init__(self, app: FastAPI, http: Literal["httptools", "h11"]) -> None:
        super().__init__(app)
        options = security.uvicorn_options(app.state.settings, http)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


def stub_app(tmp_path: Path, **overrides: Any) -> FastAPI:
    runtime = StubRuntime()
    return create_app(settings(tmp_path, **overrides), executor_factory=lambda _d: runtime)


def test_a_64_kb_header_is_a_431_problem_over_a_real_socket(tmp_path: Path) -> None:
    with LiveServer(stub_app(tmp_path)) as server:
        answer = raw_request(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"X-Big: " + b"a" * 65536 + b"\r\nConnection: close\r\n\r\n")
        with server.client() as client:
            fine = client.get("/healthz", headers={"x-fine": "a" * 8000})
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert b"content-type: application/problem+json" in head.lower()
    assert b"header-too-large" in body and b"16384 bytes" in body
    assert fine.status_code == 200


def test_a_websocket_upgrade_is_answered_as_plain_http(tmp_path: Path) -> None:
    upgrade = (b"Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    with GuardedServer(stub_app(tmp_path), "httptools") as server:
        known = raw_request(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            + upgrade + b"\r\n")
        unknown = raw_request(server.port, b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              + upgrade + b"\r\n")
    assert known.startswith(b"HTTP/1.1 200 "), known[:200]
    assert unknown.startswith(b"HTTP/1.1 404 ") and b"application/problem+json" in unknown


def test_two_host_headers_are_a_400_problem(tmp_path: Path) -> None:
    with LiveServer(stub_app(tmp_path, allowed_hosts="*")) as server:
        answer = raw_request(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Host: evil.example\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/problem+json" in head.lower()
    assert b"host-not-allowed" in body and b"one Host header" in body


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_transfer_coding_other_than_chunked_is_a_501_problem(
    tmp_path: Path, http: Literal["httptools", "h11"],
) -> None:
    body = b'{"n": 1}'
    chunked = hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"

    def post(coding: bytes) -> bytes:
        return raw_request(server.port, b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nTransfer-Encoding: " + coding
                           + b"\r\nConnection: close\r\n\r\n" + chunked)

    with GuardedServer(stub_app(tmp_path), http) as server:
        gzip_coded = post(b"gzip, chunked")
        plain = post(b"Chunked")
    head, _, problem = gzip_coded.partition(b"\r\n\r\n")
    if http == "h11":  # h11 refuses the request itself, as one it cannot parse
        assert head.startswith(b"HTTP/1.1 400 ") and b"application/problem+json" in head
        assert b"could not be parsed" in problem
    else:  # httptools hands it on, still coded: the app refuses it
        assert head.startswith(b"HTTP/1.1 501 ") and b"application/problem+json" in head
        assert b"transfer-coding-not-implemented" in problem and b"gzip, chunked" in problem
    assert plain.startswith(b"HTTP/1.1 200 "), plain[:300]


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_64_mb_head_is_cut_off_at_the_socket_without_buffering_it(
    tmp_path: Path, http: Literal["httptools", "h11"],
) -> None:
    with GuardedServer(stub_app(tmp_path), http) as server:
        before = rss_bytes()
        sent, answer = flood(server.port, 64 * 2**20)
        grown = rss_bytes() - before
        with server.client() as client:
            assert client.get("/healthz").status_code == 200  # the server is fine
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"application/problem+json" in answer and b"header-too-large" in answer
    assert sent < 32 * 2**20, sent  # refused long before the end
    assert grown < 16 * 2**20, grown


def test_pipelined_requests_are_not_counted_as_one_head(tmp_path: Path) -> None:
    request = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 400
               + b"\r\n\r\n")
    with GuardedServer(stub_app(tmp_path), "httptools") as server:
        answer = raw_request(server.port,
                             request * 99 + request.replace(b"\r\n\r\n",
                                                            b"\r\nConnection: close\r\n\r\n"))
    assert answer.count(b"HTTP/1.1 200 ") == 100 and b" 431 " not in answer


# ---- the request head: 408 (slow-loris) ------------------------------------------------------


def trickle(port: int, pieces: list[bytes], pause_s: float) -> tuple[bytes, float]:
    """Send `pieces` `pause_s` apart (as long as the server listens); (answer, seconds until
    the server closed)."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            for piece in pieces:
                if select.select([raw], [], [], pause_s)[0]:
                    break  # the server answered (and closes)
                raw.sendall(piece)
            while data := raw.recv(65536):
                answer += data
        except (BrokenPipeError, ConnectionResetError):
            pass
    return answer, time.monotonic() - started


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_head_sent_a_byte_at_a_time_is_cut_off_with_a_408_problem(
    tmp_path: Path, http: Literal["httptools", "h11"],
) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
    with GuardedServer(stub_app(tmp_path, head_timeout_s=1.0), http) as server:
        answer, seconds = trickle(server.port, [bytes([b]) for b in head], 0.1)
        silent, silent_seconds = trickle(server.port, [], 0)  # connects and says nothing
        with server.client() as client:
            assert client.get("/healthz").status_code == 200  # others are served
    for text, took in ((answer, seconds), (silent, silent_seconds)):
        assert text.startswith(b"HTTP/1.1 408 "), text[:200]
        assert b"application/problem+json" in text and b"request-timeout" in text
        assert 0.9 < took < 5
    # The problem names as much of the path as had arrived.
    instance = json.loads(answer.partition(b"\r\n\r\n")[2])["instance"]
    assert instance and "/healthz".startswith(instance)


def test_each_request_on_a_kept_alive_connection_gets_its_own_head_time(
        tmp_path: Path) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answers = []
    with GuardedServer(stub_app(tmp_path, head_timeout_s=1.0), "httptools") as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        # Three prompt requests 0.6 s apart: 1.8 s on one connection, each head in time.
        for _ in range(3):
            raw.sendall(request)
            answers.append(raw.recv(65536))
            time.sleep(0.6)
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), answers


# ---- the request body: 408 when it stalls ------------------------------------------------


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_body_that_stalls_is_cut_off_with_a_408_problem(
    tmp_path: Path, http: Literal["httptools", "h11"],
) -> None:
    head = (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 40\r\n\r\n")
    with GuardedServer(stub_app(tmp_path, body_timeout_s=1.0), http) as server:
        answer, seconds = trickle(server.port, [head + b'{"n": 1'], 0)  # 7 of 40 bytes
        with server.client() as client:
            assert client.post("/generate", json={"n": 1}).status_code == 200
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1  # nothing from the app after it
    problem = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert problem["type"].endswith("request-timeout") and problem["instance"] == "/generate"
    assert "request body" in problem["detail"]
    assert 0.9 < seconds < 5


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_a_slow_body_that_keeps_moving_is_served(
    tmp_path: Path, http: Literal["httptools", "h11"],
) -> None:
    body = b'{"n": 1' + b" " * 24 + b"}"
    head = (b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    pieces = [head] + [body[i:i + 4] for i in range(0, len(body), 4)]  # 8 pieces
    with GuardedServer(stub_app(tmp_path, body_timeout_s=1.0), http) as server:
        # 0.3 s apart: ~2.4 s for the body in all, more than the timeout, never idle that long
        answer, seconds = trickle(server.port, pieces, 0.3)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert b"image/png" in answer and seconds > 2


# ---- API keys -----------------------------------------------------------------------------


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(settings(tmp_path, api_keys=f"{KEY}, {OTHER_KEY}")) as running:
        yield running


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.mark.anyio
async def test_api_keys_guard_the_api(keyed: InProcess) -> None:
    client = keyed.client
    missing = await client.post("/generate", json={"seed": 1})
    body = assert_problem(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = await client.get("/models", headers=bearer("not-the-key"))
    assert_problem(wrong, 401, "unauthorized")
    assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
    basic = await client.get("/models", headers={"authorization": f"Basic {KEY}"})
    assert_problem(basic, 401, "unauthorized")
    assert keyed.runtime.computed == []
    assert (await client.get("/jobs/0123456789abcdef")).status_code == 401
    # Under the public /studio/ mount, but a job's: needs the key as /jobs/ does.
    assert (await client.get("/studio/jobs/0123456789abcdef/queue")).status_code == 401
    assert (await client.get("/metrics")).status_code == 401
    right = await client.post("/generate", json={"seed": 1}, headers=bearer(KEY))
    assert right.status_code == 200
    other = await client.get("/models", headers={"authorization": f"bearer  {OTHER_KEY}"})
    assert other.status_code == 200
    assert KEY not in body["detail"]


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/", "/studio/studio.js", "/docs",
                                  "/studio/config", "/openapi.json",
                                  "/static-offline-docs/swagger-ui-bundle.js"])
async def test_health_studio_and_docs_need_no_key(keyed: InProcess, path: str) -> None:
    response = await keyed.client.get(path)
    assert response.status_code == 200, path


@pytest.mark.anyio
async def test_keys_from_a_file_with_comments(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# the studio team\n\nfile-key-1\n  file-key-2   # ci runner\n#old-key\n")
    async with in_process(settings(tmp_path, api_keys=KEY, api_keys_file=keys)) as running:
        statuses = {key: (await running.client.get("/models", headers=bearer(key))).status_code
                    for key in ("file-key-1", "file-key-2", KEY, "old-key", "#old-key",
                                "file-key-2   # ci runner")}
    assert statuses == {"file-key-1": 200, "file-key-2": 200, KEY: 200, "old-key": 401,
                        "#old-key": 401, "file-key-2   # ci runner": 401}


def test_a_key_file_without_keys_stops_the_start(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match="holds no API key"):
        create_app(settings(tmp_path, api_keys_file=keys))


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {getattr(record, 'fields', '')}")


@pytest.mark.anyio
async def test_the_key_never_reaches_the_access_log(tmp_path: Path) -> None:
    captured = Captured()
    access = logging.getLogger("atelier.access")
    access.addHandler(captured)
    try:
        async with in_process(settings(tmp_path, api_keys=KEY, log_level="INFO")) as running:
            ok = await running.client.post("/generate", json={"seed": 1},
                                           headers=bearer(KEY) | {"x-request-id": "with-key"})
            listed = await running.client.get("/models",
                                              headers=bearer(KEY) | {"x-request-id": "list"})
            wrong = await running.client.get("/models",
                                             headers=bearer(KEY + "x") | {"x-request-id": "bad"})
    finally:
        access.removeHandler(captured)
    assert ok.status_code == listed.status_code == 200 and wrong.status_code == 401
    lines = [line for line in captured.lines if any(i in line for i in ("with-key", "list",
                                                                         "bad"))]
    assert len(lines) == 3, captured.lines
    assert not any(KEY in line for line in captured.lines)
    assert KEY not in wrong.text


@pytest.mark.anyio
async def test_the_principal_is_a_stable_id_of_the_key() -> None:
    def tiny(**overrides: Any) -> httpx.AsyncClient:
        app = FastAPI()

        @app.get("/whoami")
        async def whoami(request: Request) -> dict[str, str | None]:
            return {"principal": security.principal(request)}

        security.install(app, make_settings(**overrides))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OWN)

    async with tiny(api_keys=f"{KEY},{OTHER_KEY}") as client:
        one = (await client.get("/whoami", headers=bearer(KEY))).json()["principal"]
        again = (await client.get("/whoami", headers=bearer(KEY))).json()["principal"]
        other = (await client.get("/whoami", headers=bearer(OTHER_KEY))).json()["principal"]
    async with tiny() as client:
        anonymous = (await client.get("/whoami")).json()["principal"]
    assert one == again == hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert other != one and KEY not in one
    assert anonymous is None


# ---- no server paths in problems ----------------------------------------------------------


@pytest.mark.anyio
async def test_an_unpulled_model_does_not_reveal_server_paths(tmp_path: Path) -> None:
    model_dir = tmp_path / "secret-weights-dir"
    async with in_process(settings(tmp_path, model_dir=model_dir)) as running:
        listing = await running.client.get("/models")
        generate = await running.client.post("/generate", json={})
        ready = await running.client.get("/readyz")
    assert generate.status_code == 503 and ready.status_code == 503
    for response in (listing, generate, ready):
        assert "atelier models pull" in response.text
        assert str(tmp_path) not in response.text and "secret-weights-dir" not in response.text


def test_a_request_the_parser_cannot_read_is_a_problem_too(tmp_path: Path) -> None:
    """uvicorn answers unparseable requests itself, in text/plain: here, problem+json."""
    import socket as sockets

    from app.main import create_app
    from tests.conftest import LiveServer, make_settings

    with LiveServer(create_app(make_settings(jobs_dir=tmp_path / "jobs"))) as server, \
            sockets.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["type"].endswith("bad-request")
