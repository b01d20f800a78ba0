"""JsonBodyRoute: the same answers as FastAPI's own route for every JSON body, faster for
valid ones (bench/RESULTS.md), and a 415 for a body that is not sent as JSON. Each body below
goes to one endpoint declared twice, once on each route class, and the two answers are
compared byte for byte."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

import fastapi.routing
import httpx
import pytest
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import SecurityScopes
from pydantic import AfterValidator
from starlette.requests import HTTPConnection

from app.api import problems
from app.api.routing import JsonBodyRoute
from app.main import create_app
from app.services.params import GenerateRequest, InterpolateRequest
from tests.conftest import make_settings

pytestmark = pytest.mark.anyio


def _echo_app() -> FastAPI:
    """POST /fast and POST /fastapi: the same endpoint on each route class; it answers with
    what it was given (the fields, the fields set, and the request it saw). Errors are
    answered as the service answers them (problem+json)."""
    app = FastAPI()
    problems.install(app)
    for path, route_class in (("/fast", JsonBodyRoute), ("/fastapi", fastapi.routing.APIRoute)):
        router = APIRouter(route_class=route_class)

        @router.post(path)
        async def echo(
            request: Request, body: Annotated[GenerateRequest | None, Body()] = None
        ) -> Response:
            given = None if body is None else {
                "fields": body.model_dump(mode="json"), "set": sorted(body.model_fields_set)}
            return Response(json.dumps({"body": given, "method": request.method}),
                            media_type="application/json")

        app.router.routes.extend(router.routes)  # as app/main.py adds its routes
    return app


JSON_TYPE = {"content-type": "application/json"}
CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("fields", b'{"n": 2, "seed": 7, "truncation": 1.5, "format": "jpeg"}', JSON_TYPE),
    ("empty object", b"{}", JSON_TYPE),
    ("with a charset", b'{"n": 3}', {"content-type": "application/json; charset=utf-8"}),
    ("media type in capitals", b'{"n": 3}', {"content-type": "Application/JSON"}),
    ("+json subtype", b'{"n": 3}', {"content-type": "application/merge-patch+json"}),
    ("no body", b"", JSON_TYPE),
    ("no body, no content type", b"", {}),
    ("no body, a form's content type", b"", {"content-type": "text/plain"}),
    ("null", b"null", JSON_TYPE),
    ("a list", b"[1, 2]", JSON_TYPE),
    ("a string", b'"x"', JSON_TYPE),
    ("n out of range", b'{"n": 0}', JSON_TYPE),
    ("n as a string", b'{"n": "3"}', JSON_TYPE),
    ("n as a whole float", b'{"n": 2.0}', JSON_TYPE),
    ("n as a fraction", b'{"n": 2.5}', JSON_TYPE),
    ("n as a boolean", b'{"n": true}', JSON_TYPE),
    ("an unknown field", b'{"n": 1, "colour": "red"}', JSON_TYPE),
    ("a field twice", b'{"n": 1, "n": 2}', JSON_TYPE),
    ("cut short", b'{"n": ', JSON_TYPE),
    ("trailing bytes", b'{"n": 1} x', JSON_TYPE),
    ("NaN", b'{"truncation": NaN}', JSON_TYPE),
    ("Infinity", b'{"truncation": Infinity}', JSON_TYPE),
    ("an overflowing float", b'{"truncation": 1e400}', JSON_TYPE),
    ("a huge integer", b'{"seed": 100000000000000000000000000000}', JSON_TYPE),
    ("a format in capitals", b'{"format": "PNG"}', JSON_TYPE),
    ("an unknown format", b'{"format": "bmp"}', JSON_TYPE),
    ("a byte-order mark", b'\xef\xbb\xbf{"n": 2}', JSON_TYPE),
    ("UTF-16", '{"n": 2}'.encode("utf-16"), JSON_TYPE),
    ("invalid UTF-8", b'{"model": "\xff\xfe"}', JSON_TYPE),
    ("a lone surrogate", b'{"model": "\\ud800"}', JSON_TYPE),
    ("deep nesting", b'{"model": ' + b"[" * 300 + b"]" * 300 + b"}", JSON_TYPE),
]


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_echo_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.parametrize(("body", "headers"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_answers_are_fastapis_to_the_byte(
    client: httpx.AsyncClient, body: bytes, headers: dict[str, str]
) -> None:
    fast = await client.post("/fast", content=body, headers=headers)
    plain = await client.post("/fastapi", content=body, headers=headers)
    plain_body = plain.content.replace(b'"instance": "/fastapi"', b'"instance": "/fast"')
    assert (fast.status_code, fast.headers.get("content-type"), fast.content) == (
        plain.status_code, plain.headers.get("content-type"), plain_body)


@pytest.mark.parametrize(("headers", "named"), [
    ({"content-type": "application/x-www-form-urlencoded"},  # curl -d
     "as application/x-www-form-urlencoded"),
    ({"content-type": "text/plain; charset=utf-8"}, "as text/plain; charset=utf-8"),
    ({"content-type": "multipart/form-data; boundary=x"}, "as multipart/form-data"),
    ({}, "without a Content-Type"),
])
async def test_a_body_not_sent_as_json_is_a_415_naming_the_type_to_send(
    client: httpx.AsyncClient, headers: dict[str, str], named: str
) -> None:
    plain = await client.post("/fastapi", content=b'{"n": 3}', headers=headers)
    assert plain.status_code == 422  # FastAPI: "Input should be a valid dictionary"
    refused = await client.post("/fast", content=b'{"n": 3}', headers=headers)
    assert refused.status_code == 415
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["accept-post"] == "application/json"
    problem = refused.json()
    assert problem["type"] == "urn:atelier:problem:unsupported-media-type"
    assert "Content-Type: application/json" in problem["detail"]
    assert named in problem["detail"]


async def test_a_valid_json_body_skips_fastapis_handler(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(**_: Any) -> Any:
        raise AssertionError("FastAPI's parameter solving ran")

    # Handlers are built when the routes are: this app's fall-back handler is already made,
    # and it looks `solve_dependencies` up in its module at each call.
    monkeypatch.setattr(fastapi.routing, "solve_dependencies", broken)
    fast = await client.post("/fast", json={"n": 2})
    assert fast.status_code == 200
    assert fast.json()["body"]["fields"]["n"] == 2
    with pytest.raises(AssertionError, match="parameter solving"):
        await client.post("/fastapi", json={"n": 2})
    with pytest.raises(AssertionError, match="parameter solving"):  # falls back when invalid
        await client.post("/fast", json={"n": 0})


def test_only_request_plus_one_json_model_endpoints_take_the_fast_path() -> None:
    router = APIRouter(route_class=JsonBodyRoute)

    @router.post("/a")
    async def just_body(request: Request, body: GenerateRequest) -> Response:
        return Response()

    @router.post("/b")
    async def with_dependency(
        request: Request, body: GenerateRequest, settings: Annotated[Any, Depends(make_settings)]
    ) -> Response:
        return Response()

    @router.post("/c")
    async def embedded(
        request: Request, body: Annotated[GenerateRequest, Body(embed=True)]
    ) -> Response:
        return Response()

    @router.post("/d")
    async def returns_a_dict(request: Request, body: GenerateRequest) -> dict[str, int]:
        return {}

    @router.post("/e")
    def sync(request: Request, body: GenerateRequest) -> Response:
        return Response()

    @router.post("/f")
    async def two_models(
        request: Request, a: GenerateRequest, b: InterpolateRequest
    ) -> Response:
        return Response()

    @router.post("/g")
    async def with_connection(
        request: Request, body: GenerateRequest, connection: HTTPConnection
    ) -> Response:
        return Response()

    @router.post("/h")
    async def with_scopes(
        request: Request, body: GenerateRequest, scopes: SecurityScopes
    ) -> Response:
        return Response()

    def at_most_two(body: GenerateRequest) -> GenerateRequest:
        if body.n > 2:
            raise ValueError("at most 2")
        return body

    @router.post("/i")
    async def validated(
        request: Request, body: Annotated[GenerateRequest, Body(), AfterValidator(at_most_two)]
    ) -> Response:
        return Response()

    @router.post("/j")
    async def wide_union(
        request: Request, body: Annotated[GenerateRequest | dict[str, int], Body()]
    ) -> Response:
        return Response()

    fast = {route.path: route._fast_body() for route in router.routes
            if isinstance(route, JsonBodyRoute)}
    assert fast == {"/a": ("request", "body", GenerateRequest), "/b": None, "/c": None,
                    "/d": None, "/e": None, "/f": None, "/g": None, "/h": None, "/i": None,
                    "/j": None}


def test_generate_takes_the_fast_path_and_interpolate_does_not() -> None:
    app = create_app(make_settings())
    routes = {route.path: route for route in app.router.routes
              if isinstance(route, JsonBodyRoute)}
    assert routes["/generate"]._fast_body() == ("request", "body", GenerateRequest)
    assert routes["/generate/interpolate"]._fast_body() is None  # it has dependencies


async def _asgi(app: FastAPI, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """POST `chunks` as a chunked JSON body, then a hang-up: (status, body) answered."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("test", 80),
             "headers": [(b"host", b"test"), (b"content-type", b"application/json"),
                         (b"transfer-encoding", b"chunked")]}
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_client_that_leaves_mid_body_gets_fastapis_400() -> None:
    app = _echo_app()
    fast = await _asgi(app, "/fast", [b'{"n": '])
    plain = await _asgi(app, "/fastapi", [b'{"n": '])
    assert fast[0] == plain[0] == 400
    assert fast[1] == plain[1].replace(b'"/fastapi"', b'"/fast"')
    assert b"There was an error parsing the body" in fast[1]


@pytest.mark.parametrize("content_type", [
    b"application/json\xa0", b"\xa0application/json", b"application/json\x1c",
    b"APPLICATION/JSON ; charset=utf-8", b"application/vnd.atelier+json",
])
async def test_content_types_fastapi_reads_as_json_are_json_here(
    client: httpx.AsyncClient, content_type: bytes
) -> None:
    headers = {"content-type": content_type}
    fast = await client.post("/fast", content=b'{"n": 3}', headers=headers)
    plain = await client.post("/fastapi", content=b'{"n": 3}', headers=headers)
    assert plain.status_code == 200, plain.text
    assert (fast.status_code, fast.content) == (plain.status_code, plain.content)


async def test_a_media_type_fastapi_does_not_read_as_json_is_a_415(
    client: httpx.AsyncClient,
) -> None:
    headers = {"content-type": "application/a/b+json"}  # two slashes: text/plain to email
    assert (await client.post("/fastapi", content=b"{}", headers=headers)).status_code == 422
    assert (await client.post("/fast", content=b"{}", headers=headers)).status_code == 415


async def test_an_include_with_dependencies_keeps_fastapis_handler() -> None:
    refused: list[str] = []

    async def require_key(request: Request) -> None:
        if request.headers.get("x-key") != "k":
            refused.append(request.url.path)
            raise HTTPException(401, "no key")

    router = APIRouter(route_class=JsonBodyRoute)

    @router.post("/guarded")
    async def guarded(request: Request, body: GenerateRequest) -> Response:
        return Response("ran")

    app = FastAPI()
    app.include_router(router, dependencies=[Depends(require_key)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        without = await client.post("/guarded", json={"n": 1})
        with_key = await client.post("/guarded", json={"n": 1}, headers={"x-key": "k"})
    assert (without.status_code, with_key.status_code) == (401, 200)
    assert refused == ["/guarded"]
