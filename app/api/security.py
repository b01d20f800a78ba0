"""Who may call the API and from where: Host check, cross-site refusal, CORS, header limit,
API keys. Installed by `install(app, settings)`.

Pure ASGI layers, outermost first (all inside the access log, so refusals are logged and
carry the request id):

* `Guard`, always: one pass over the request head that refuses a head over
  `max_header_bytes` (431), a Host header the server does not answer for (400, against DNS
  rebinding) and a state-changing request sent by a browser from another site (403).
* `Cors`, when `cors_origins` is set: Starlette's CORS middleware for those origins, whose
  refused preflights are problem documents too.
* `ApiKeys`, when keys are configured: `Authorization: Bearer <key>` on every request but
  the public pages (401); sets `scope["state"]["principal"]`.

The socket layer gets its own guard: uvicorn's default HTTP implementation (httptools)
buffers a request head of any size, so `uvicorn_options(settings)` gives the server a
protocol class that stops reading a head once it passes the limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from fastapi import FastAPI, Request
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.middleware import new_request_id
from app.api.problems import PROBLEM_JSON, HttpProblem, problem_bytes, problem_headers
from app.errors import AtelierError
from app.settings import Settings

if TYPE_CHECKING:
    from uvicorn.protocols.http.flow_control import FlowControl

log = logging.getLogger("atelier.access")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CORS_ALLOW_METHODS = ("GET", "HEAD", "POST", "DELETE")
CORS_ALLOW_HEADERS = ("Authorization", "Prefer", "Last-Event-ID", "X-Request-Timeout",
                      "Content-Type")
CORS_EXPOSE_HEADERS = ("X-Job-Id", "X-Seed", "X-Model", "X-Request-ID", "Location",
                       "Retry-After")
# Answerable without a key: health checks, the studio page and its assets, the API docs.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/studio", "/docs"})
PUBLIC_MOUNTS = frozenset({"studio", "static-offline-docs"})
# Under a public mount but about a job: these need the key that made the job, as /jobs/ do.
PRIVATE_PREFIXES = ("/studio/jobs/",)


# ---- problem types ------------------------------------------------------------------------


class HostNotAllowed(AtelierError):
    status = 400
    slug = "host-not-allowed"
    title = "Host not allowed"


class TransferCodingNotImplemented(AtelierError):
    """A body sent in a transfer coding other than chunked (RFC 9112 §6.1: 501). The
    server would hand its bytes to the app still coded: a gzip-coded JSON body read as JSON."""

    status = 501
    slug = "transfer-coding-not-implemented"
    title = "Transfer coding not implemented"

    def __init__(self, codings: str) -> None:
        super().__init__(f"request bodies are read as sent or chunked; Transfer-Encoding was"
                         f" {codings!r}")


class CrossSiteRefused(AtelierError):
    status = 403
    slug = "cross-site-request"
    title = "Cross-site request refused"


class CorsRefused(AtelierError):
    status = 403
    slug = "cors-refused"
    title = "CORS request refused"


class RequestTimeout(AtelierError):
    """A request head or body that arrived too slowly (one problem type, one title)."""

    status = 408
    slug = "request-timeout"
    title = "Request too slow"


class HeaderTooLarge(AtelierError):
    status = 431
    slug = "header-too-large"
    title = "Request header fields too large"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"the request line and headers exceed {max_bytes} bytes")


class Unauthorized(AtelierError):
    status = 401
    slug = "unauthorized"
    title = "Unauthorized"

    def __init__(self, detail: str, challenge: str) -> None:
        super().__init__(detail)
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


async def _refuse(scope: Scope, send: Send, error: AtelierError,
                  extra: list[tuple[bytes, bytes]] | None = None) -> None:
    request_id = scope.get("state", {}).get("request_id")
    body = problem_bytes(error, scope["path"], request_id)
    headers = [(b"content-type", PROBLEM_JSON.encode()),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    # X-Request-ID comes from the access log, outside.
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in problem_headers(error, None).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _codings(headers: list[bytes]) -> list[bytes]:
    """The transfer codings of every Transfer-Encoding header, in order, lower case."""
    return [coding.strip().lower() for value in headers for coding in value.split(b",")
            if coding.strip()]


# ---- Host and origin parsing --------------------------------------------------------------

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def split_host(value: str) -> tuple[str, str | None] | None:
    """`host[:port]` of a Host header (or an origin's authority) as (lowercase name, port);
    IPv6 addresses without their brackets. None when it is malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:
        name, colon, port_text = value.rpartition(":")
        if not colon or ":" in name:  # no port, or an unbracketed IPv6 address
            name, port = value, None
        else:
            port = port_text
    if not name or (port is not None and not port.isdigit()):
        return None
    return name, port


def _authority(scheme: str, host: str) -> str | None:
    parsed = split_host(host)
    if parsed is None:
        return None
    name, port = parsed
    if ":" in name:
        name = f"[{name}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return name
    return f"{name}:{port}"


def normalize_origin(origin: str) -> str | None:
    """`scheme://host[:port]` in lowercase without a default port, or None (`null`, junk)."""
    scheme, sep, rest = origin.strip().rstrip("/").partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS or "/" in rest or not rest:
        return None
    authority = _authority(scheme, rest)
    return f"{scheme}://{authority}" if authority else None


class HostPolicy:
    """The Host values the server answers for: names (any port), `name:port`, `*.domain`."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.with_port: set[tuple[str, str]] = set()
        self.suffixes: list[str] = []
        for raw in patterns:
            pattern = raw.strip().lower()
            if pattern.startswith("*."):
                self.suffixes.append(pattern[1:])
                continue
            parsed = split_host(pattern)
            if parsed is None or "*" in pattern:
                raise ValueError(f"ATELIER_ALLOWED_HOSTS: {raw!r} is not a host name")
            name, port = parsed
            if port is None:
                self.names.add(name)
            else:
                self.with_port.add((name, port))

    def allows(self, host: str | None) -> bool:
        parsed = split_host(host) if host else None
        if parsed is None:
            return False
        name, port = parsed
        return (name in self.names or (port is not None and parsed in self.with_port)
                or any(name.endswith(s) for s in self.suffixes))


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def host_policy(settings: Settings) -> HostPolicy | None:
    """None: any Host is answered."""
    value = settings.allowed_hosts.strip()
    if value.lower() == "auto":
        return HostPolicy(LOOPBACK_NAMES) if is_loopback(settings.host) else None
    patterns = [p for p in value.split(",") if p.strip()]
    if not patterns or "*" in (p.strip() for p in patterns):
        return None
    return HostPolicy(patterns)


def cors_origins(settings: Settings) -> list[str]:
    origins: list[str] = []
    for raw in settings.cors_origins.split(","):
        if not raw.strip():
            continue
        origin = normalize_origin(raw)
        if origin is None:
            raise ValueError(f"ATELIER_CORS_ORIGINS: {raw.strip()!r} is not an origin"
                             " (scheme://host[:port])")
        origins.append(origin)
    return origins


# ---- the guard: head size, Host, cross-site -----------------------------------------------

_SEEN_MAX = 1024


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _SEEN_MAX:
        cache.clear()
    cache[key] = value


class Guard:
    """431 for a head over `max_head_bytes`, 400 for a Host outside `hosts` (None: any),
    403 for a state-changing request that a browser sends from another site.

    A state-changing request (not GET/HEAD/OPTIONS) passes when it carries neither Origin
    nor Sec-Fetch-Site (curl, scripts); else its Origin must be the server's own
    (`scheme://Host`) or one of `trusted_origins`, and a browser's `Sec-Fetch-Site` must not
    say `cross-site` (unless the origin is trusted) or `same-site` from another origin.
    """

    def __init__(self, app: ASGIApp, *, max_head_bytes: int, hosts: HostPolicy | None,
                 trusted_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.max_head_bytes = max_head_bytes
        self.hosts = hosts
        self.trusted = frozenset(trusted_origins)
        # Decisions by raw header values: a server sees few distinct ones, and parsing them
        # is most of this layer's cost. Bounded, so random values cannot grow it.
        self._hosts_seen: dict[bytes | None, bool] = {}
        self._sites_seen: dict[tuple[str, bytes | None, bytes | None, bytes | None],
                               str | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state.setdefault("principal", None)
        method: str = scope["method"]
        # The request line as sent: "METHOD target HTTP/1.1\r\n", then "name: value\r\n"
        # per header and the empty line.
        size = len(method) + len(scope.get("raw_path") or b"") + len(scope["query_string"]) + 15
        host = origin = site = None
        hosts = 0
        codings: list[bytes] = []
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"host":
                host = host or value
                hosts += 1
            elif name == b"transfer-encoding":
                codings.append(value)
            elif name == b"origin":
                origin = value
            elif name == b"sec-fetch-site":
                site = value
        if size > self.max_head_bytes:
            await _refuse(scope, send, HeaderTooLarge(self.max_head_bytes))
            return
        if hosts > 1:  # which one names the server? RFC 9112 §3.2: refuse the request
            await _refuse(scope, send, HostNotAllowed(
                f"a request has one Host header; this one has {hosts}"))
            return
        if codings and _codings(codings) != [b"chunked"]:
            shown = b", ".join(codings).decode("latin-1")[:100]
            await _refuse(scope, send, TransferCodingNotImplemented(shown),
                          [(b"connection", b"close")])  # the body is not read
            return
        if self.hosts is not None:
            allowed = self._hosts_seen.get(host)
            if allowed is None:
                allowed = self.hosts.allows(host.decode("latin-1") if host else None)
                _remember(self._hosts_seen, host, allowed)
            if not allowed:
                shown = repr(host.decode("latin-1")[:100]) if host is not None else "(none)"
                await _refuse(scope, send, HostNotAllowed(
                    f"this server does not answer for the Host {shown}"))
                return
        if method not in SAFE_METHODS and (origin is not None or site is not None):
            key = (scope["scheme"], host, origin, site)
            try:
                reason = self._sites_seen[key]
            except KeyError:
                reason = self._cross_site(*key)
                _remember(self._sites_seen, key, reason)
            if reason:
                await _refuse(scope, send, CrossSiteRefused(reason))
                return
        await self.app(scope, receive, send)

    def _cross_site(self, scheme: str, host: bytes | None, origin: bytes | None,
                    site: bytes | None) -> str | None:
        """Why the request is refused, or None."""
        claimed = normalize_origin(origin.decode("latin-1")) if origin is not None else None
        if claimed is not None and claimed in self.trusted:
            return None
        own_authority = _authority(scheme, host.decode("latin-1")) if host else None
        own = f"{scheme}://{own_authority}" if own_authority else None
        if origin is not None and (claimed is None or claimed != own):
            return ("requests that change state are accepted only from this server's own"
                    " pages or the origins in ATELIER_CORS_ORIGINS")
        if site == b"cross-site" or (site == b"same-site" and origin is None):
            return "the browser reports a request from another site (Sec-Fetch-Site)"
        return None


# ---- CORS ---------------------------------------------------------------------------------


class Cors(CORSMiddleware):
    """Starlette's CORS middleware, whose refused preflights are problem documents."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                response = self.preflight_response(request_headers=headers)
                if response.status_code == 200:
                    await response(scope, receive, send)
                else:
                    # "Disallowed CORS origin, method" and so on, from Starlette.
                    detail = bytes(response.body).decode("latin-1")
                    await _refuse(scope, send, CorsRefused(detail),
                                  [(b"vary", response.headers["vary"].encode("latin-1"))])
                return
        await super().__call__(scope, receive, send)


# ---- API keys -----------------------------------------------------------------------------


def key_id(key: str) -> str:
    """A stable identifier of a key that reveals nothing of it."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


_INLINE_COMMENT = re.compile(r"\s+#.*$")
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def load_api_keys(settings: Settings) -> list[str]:
    """`api_keys` plus the lines of `api_keys_file` (blank lines and `#` comments skipped).

    Raises ValueError when a file is named but holds no key: better no start than an API
    that refuses everyone, or one left open by an empty file."""
    keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
    if settings.api_keys_file is not None:
        path = Path(settings.api_keys_file)
        found = 0
        for line in path.read_text(encoding="utf-8").splitlines():
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            keys.append(_INLINE_COMMENT.sub("", text))
            found += 1
        if not found:
            raise ValueError(f"ATELIER_API_KEYS_FILE {path} holds no API key")
    for number, key in enumerate(keys, 1):
        if not _TOKEN.fullmatch(key):  # never echo the key itself
            raise ValueError(f"API key #{number} is not a bearer token (RFC 6750: letters,"
                             " digits and -._~+/= only)")
    return list(dict.fromkeys(keys))


class ApiKeys:
    """401 unless the request carries `Authorization: Bearer <one of the keys>`, except on
    the public paths (but not those under `private_prefixes`). Keys are compared as SHA-256
    digests with `hmac.compare_digest`, all of them every time; the key itself is never
    logged or echoed."""

    def __init__(self, app: ASGIApp, *, keys: Iterable[str], public_paths: Iterable[str],
                 public_prefixes: Iterable[str], private_prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self.keys = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys]
        if not self.keys:
            raise ValueError("ApiKeys needs at least one key")
        self.public_paths = frozenset(public_paths)
        self.public_prefixes = tuple(public_prefixes)
        self.private_prefixes = tuple(private_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if (path in self.public_paths or path.startswith(self.public_prefixes)) and (
                not path.startswith(self.private_prefixes)):
            await self.app(scope, receive, send)
            return
        credentials = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                credentials = value
                break
        if credentials is None:
            await _refuse(scope, send, Unauthorized(
                "this API needs a key: send `Authorization: Bearer <key>`",
                'Bearer realm="atelier"'))
            return
        scheme, _, token = credentials.strip().partition(b" ")
        digest = hashlib.sha256(token.strip()).digest()
        principal = None
        for known, ident in self.keys:  # no early exit: same work whichever key matches
            if hmac.compare_digest(known, digest):
                principal = ident
        if scheme.lower() != b"bearer" or principal is None:
            await _refuse(scope, send, Unauthorized(
                "the API key is not valid",
                'Bearer realm="atelier", error="invalid_token"'))
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def principal(request: Request) -> str | None:
    """The id of the API key that made this request (`key_id`); None with keys off or on a
    public path."""
    value = getattr(request.state, "principal", None)
    return value if isinstance(value, str) else None


def _public(app: FastAPI) -> tuple[set[str], list[str]]:
    paths = set(PUBLIC_PATHS)
    for extra in (app.openapi_url, app.swagger_ui_oauth2_redirect_url):
        if extra:
            paths.add(extra)
    prefixes = [f"{r.path}/" for r in app.routes
                if isinstance(r, Mount) and r.name in PUBLIC_MOUNTS]
    return paths, prefixes


# ---- installation -------------------------------------------------------------------------


def install(app: FastAPI, settings: Settings) -> None:
    """Add the security middleware the settings ask for (innermost first: Starlette puts each
    `add_middleware` outside the previous ones)."""
    keys = load_api_keys(settings)
    if keys or settings.api_keys_file is not None:
        paths, prefixes = _public(app)
        app.add_middleware(ApiKeys, keys=keys, public_paths=paths, public_prefixes=prefixes,
                           private_prefixes=PRIVATE_PREFIXES)
    origins = cors_origins(settings)
    if origins:
        app.add_middleware(
            Cors, allow_origins=origins, allow_methods=CORS_ALLOW_METHODS,
            allow_headers=CORS_ALLOW_HEADERS, expose_headers=CORS_EXPOSE_HEADERS,
        )
    app.add_middleware(Guard, max_head_bytes=settings.max_header_bytes,
                       hosts=host_policy(settings), trusted_origins=origins)


# ---- the socket layer: a bounded request head ---------------------------------------------

# After a 431, how long (and how much) unread input is read and thrown away before the
# connection is closed, so that the client reads the answer before the kernel's reset.
LINGER_S = 2.0
LINGER_BYTES = 64 << 20


class _HeadLimit(asyncio.Protocol):
    """Mixed into uvicorn's HTTP protocol classes: refuses a request head with 431 once the
    bytes received for it pass `max_head_bytes`, instead of buffering it whole.

    Only whole chunks received while a head is open are counted, so the count stays exact
    for a head that arrives in pieces and undercounts by at most one read (256 KiB) when a
    chunk also holds a body or another request; `Guard` checks the exact size of a head that
    arrived whole."""

    max_head_bytes: ClassVar[int] = 16 * 1024
    # Slow-loris: a request head (or a new connection's first one) must arrive whole within
    # this many seconds; uvicorn only times out idle kept-alive connections.
    head_timeout_s: ClassVar[float] = 20.0
    # The same for a body sent a trickle at a time: at most this long without a byte while
    # the server is reading it. (uvicorn has no body timeout: a stalled upload holds its
    # connection, and the app's task waiting for the body, for good.)
    body_timeout_s: ClassVar[float] = 60.0
    transport: asyncio.Transport
    # uvicorn's, shared by both of its HTTP implementations.
    flow: FlowControl
    cycle: Any

    _head_bytes = 0
    _head_start = b""
    _refused = False
    _drained = 0
    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_body_timer()
        super().connection_lost(exc)

    def _body_open(self) -> bool:  # pragma: no cover - overridden
        """A request head has arrived and its body has not, all of it."""
        raise NotImplementedError

    def _start_body_timer(self) -> None:
        self._stop_body_timer()
        self._body_timer = asyncio.get_running_loop().call_later(
            self.body_timeout_s, self._body_too_slow)

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self._refused or self.transport.is_closing() or not self._body_open():
            return
        if self.flow.read_paused or getattr(self.cycle, "waiting_for_100_continue", False):
            # The server is not reading (the app has not taken what arrived, or has not
            # asked for the body of an `Expect: 100-continue`): not the client's delay.
            self._start_body_timer()
            return
        answering = self.cycle.response_started
        # The app's task sees a hang-up from now on, and what it sends is dropped.
        self.cycle.disconnected = True
        self.cycle.message_event.set()
        if answering:  # an answer is under way: only end the connection
            self._refused = True
            self.transport.close()
            return
        path = str(self.cycle.scope.get("path", ""))[:256]
        self._refuse(RequestTimeout(
            f"no byte of the request body arrived for {self.body_timeout_s:g} s"),
            "408 Request Timeout", path)

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = asyncio.get_running_loop().call_later(
            self.head_timeout_s, self._head_too_slow)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing() or not self._head_open():
            return
        self._refuse(RequestTimeout(
            f"the request line and headers did not arrive within {self.head_timeout_s:g} s"),
            "408 Request Timeout")

    def _head_open(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError

    def _head_marker(self) -> object:  # pragma: no cover - overridden
        """Changes whenever a request head is completed."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        if self._refused:
            self._drain(len(data))
            return
        was_open, marker = self._head_open(), self._head_marker()
        super().data_received(data)
        if self._refused or self.transport.is_closing():
            return
        if self._body_open():
            self._start_body_timer()  # the body moved on: its clock starts again
        elif self._body_timer is not None:
            self._stop_body_timer()
        if marker is not self._head_marker() or not self._head_open():
            # A head was completed (the bytes of one begun in the same chunk go uncounted).
            self._head_bytes, self._head_start = 0, b""
            self._stop_head_timer()
        elif was_open:
            if not self._head_bytes and self._head_timer is None:
                self._start_head_timer()  # the next head on a kept-alive connection
            if len(self._head_start) < 1024:  # enough to name the request when refusing it
                self._head_start += data[:1024 - len(self._head_start)]
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(HeaderTooLarge(self.max_head_bytes),
                             "431 Request Header Fields Too Large")

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()
            return
        super().eof_received()

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser cannot read: problem+json like every other error
        (uvicorn answers these itself, in text/plain)."""
        request_id = new_request_id()
        body = problem_bytes(HttpProblem(400, f"the HTTP request could not be parsed: {msg}"),
                             "", request_id)
        self.transport.write(
            (f"HTTP/1.1 400 Bad Request\r\ncontent-type: {PROBLEM_JSON}\r\n"
             f"content-length: {len(body)}\r\nx-request-id: {request_id}\r\n"
             "connection: close\r\n\r\n").encode() + body)
        self.transport.close()

    def _drain(self, size: int) -> None:
        self._drained += size
        if self._drained > LINGER_BYTES:
            self.transport.close()

    def _refuse(self, error: AtelierError, status_line: str, path: str | None = None) -> None:
        """Answer `error` at the socket and close; `path`: the request's, when its head has
        been parsed (else it is read from the bytes of the head that arrived)."""
        self._refused = True
        self._stop_head_timer()
        self._stop_body_timer()
        request_line = self._head_start.split(b"\r\n", 1)[0].decode("latin-1")
        method, _, rest = request_line.partition(" ")
        if path is None:
            target = rest.rpartition(" ")[0] if " HTTP/" in rest else rest
            path = target.partition("?")[0][:256]
        request_id = new_request_id()
        body = problem_bytes(error, path, request_id)
        head = (f"HTTP/1.1 {status_line}\r\n"
                f"content-type: {PROBLEM_JSON}\r\ncontent-length: {len(body)}\r\n"
                f"x-request-id: {request_id}\r\nconnection: close\r\n\r\n").encode()
        self.transport.write(head + body)
        log.info("request", extra={"fields": {
            "request_id": request_id, "method": method[:16], "path": path,
            "status": error.status, "duration_ms": 0.0, "head_bytes": self._head_bytes}})
        # Half-close and read on for a while before closing: closing with unread input
        # makes the kernel send a reset that can destroy the answer before it is read.
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, self.transport.close)


def _protocol_classes(max_head_bytes: int, head_timeout_s: float, body_timeout_s: float,
                      http: Literal["auto", "httptools", "h11"]) -> type[asyncio.Protocol]:
    use_httptools = http == "httptools"
    if http == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:  # pragma: no cover
            use_httptools = False
        else:
            use_httptools = True
    if use_httptools:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class HeadLimitHttpTools(_HeadLimit, HttpToolsProtocol):
            _open = True
            _heads = 0

            def _head_open(self) -> bool:
                return self._open

            def _head_marker(self) -> object:
                return self._heads

            def _body_open(self) -> bool:
                return not self._open

            def on_headers_complete(self) -> None:
                self._open = False
                self._heads += 1
                super().on_headers_complete()

            def on_message_complete(self) -> None:
                super().on_message_complete()
                self._open = True

        HeadLimitHttpTools.max_head_bytes = max_head_bytes
        HeadLimitHttpTools.head_timeout_s = head_timeout_s
        HeadLimitHttpTools.body_timeout_s = body_timeout_s
        return HeadLimitHttpTools

    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadLimitH11(_HeadLimit, H11Protocol):
        def _head_open(self) -> bool:
            return self.conn.their_state is h11.IDLE

        def _head_marker(self) -> object:
            return self.headers  # a new list for every request head h11 parses

        def _body_open(self) -> bool:
            return self.conn.their_state is h11.SEND_BODY

    HeadLimitH11.max_head_bytes = max_head_bytes
    HeadLimitH11.head_timeout_s = head_timeout_s
    HeadLimitH11.body_timeout_s = body_timeout_s
    return HeadLimitH11


def uvicorn_options(settings: Settings,
                    http: Literal["auto", "httptools", "h11"] = "auto") -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run`/`uvicorn.Config` that bound the request head at
    the socket: `max_header_bytes`, answered 431 problem+json, and `head_timeout_s` and
    `body_timeout_s`, answered 408 problem+json, on either HTTP implementation. (h11's own
    `h11_max_incomplete_event_size` stays as a backstop, set above ours so that ours answers
    first.)"""
    return {
        "http": _protocol_classes(settings.max_header_bytes, settings.head_timeout_s,
                                  settings.body_timeout_s, http),
        "h11_max_incomplete_event_size": settings.max_header_bytes + (1 << 20),
        # No WebSocket endpoint here: an upgrade request is answered as plain HTTP (the
        # route's answer, or a problem+json 404), not with uvicorn's bare text/plain 403.
        "ws": "none",
    }

