"""The problem+json builder (RFC 9457) and the handlers `problems.install` registers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import (
    PROBLEM_JSON,
    HttpProblem,
    RequestInvalid,
    install,
    problem_body,
    problem_bytes,
    problem_headers,
    request_invalid,
)
from app.errors import AtelierError, InternalError, InvalidField, as_atelier_error


class Busy(AtelierError):
    status = 503
    slug = "busy"
    title = "Busy"
    retry_after_s = 7

    def extensions(self) -> dict[str, Any]:
        return {"queue": 12, "lanes": ["a", "b"]}

    def headers(self) -> dict[str, str]:
        return {"X-Lane": "a"}


class Gone(AtelierError):
    status = 410
    slug = "gone"
    title = "Gone for good"


def test_the_body_has_every_member_and_the_extensions() -> None:
    body = problem_body(Busy("the queue is full"), "/generate", "req-1")
    assert body == {
        "type": "urn:atelier:problem:busy", "title": "Busy", "status": 503,
        "detail": "the queue is full", "instance": "/generate", "request_id": "req-1",
        "queue": 12, "lanes": ["a", "b"],
    }
    assert json.loads(problem_bytes(Busy("x"), "/p", None)) == problem_body(Busy("x"), "/p",
                                                                              None)


def test_no_request_id_member_without_a_request_id() -> None:
    body = problem_body(Gone("it left"), "/jobs/1", None)
    assert "request_id" not in body
    assert body["type"] == "urn:atelier:problem:gone" and body["status"] == 410
    assert body["detail"] == "it left" and body["instance"] == "/jobs/1"


def test_retry_after_comes_from_retry_after_s() -> None:
    assert problem_headers(Busy("x"), None) == {"X-Lane": "a", "Retry-After": "7"}
    assert problem_headers(Gone("x"), None) == {}
    assert problem_headers(Gone("x"), "rid") == {"X-Request-ID": "rid"}


def test_a_retry_after_set_on_the_instance_wins() -> None:
    error = Busy("x")
    error.retry_after_s = 30
    assert problem_headers(error, None)["Retry-After"] == "30"


def test_an_invalid_field_names_it() -> None:
    error = InvalidField("steps", "must be between 1 and 50")
    body = problem_body(error, "/stylize", None)
    assert body["status"] == 422 and body["type"] == "urn:atelier:problem:validation"
    assert body["detail"] == "steps: must be between 1 and 50"
    assert body["errors"] == [{"field": "steps", "message": "must be between 1 and 50",
                               "type": "value_error"}]


@pytest.mark.parametrize(
    ("loc", "field"),
    [
        (("body", "n"), "n"),
        (("query", "limit"), "limit"),
        (("header", "x-request-timeout"), "x-request-timeout"),
        (("body", "style_blend", 1), "style_blend.1"),
        (("body", "nested", "inner"), "nested.inner"),
        (("body",), "body"),
        ((), "body"),
        (("seed",), "seed"),
    ],
)
def test_validation_errors_name_the_field_without_its_location(loc: tuple[Any, ...],
                                                               field: str) -> None:
    invalid = request_invalid(RequestValidationError(
        [{"loc": loc, "msg": "bad value", "type": "value_error"}]))
    assert isinstance(invalid, RequestInvalid)
    assert invalid.errors == [{"field": field, "message": "bad value", "type": "value_error"}]
    body = problem_body(invalid, "/x", None)
    assert body["status"] == 422 and body["title"] == "Invalid request"
    assert body["errors"][0]["field"] == field
    assert body["detail"] == f"{field}: bad value"


def test_several_validation_errors_are_all_listed() -> None:
    invalid = request_invalid(RequestValidationError([
        {"loc": ("body", "n"), "msg": "too big", "type": "less_than_equal"},
        {"loc": ("body", "seed"), "msg": "negative", "type": "greater_than_equal"},
    ]))
    assert [e["field"] for e in invalid.errors] == ["n", "seed"]
    assert invalid.detail == "n: too big; seed: negative"


@pytest.mark.parametrize(
    ("status", "slug", "title"),
    [(404, "not-found", "Not found"), (405, "method-not-allowed", "Method not allowed"),
     (406, "not-acceptable", "Not acceptable"), (409, "conflict", "Conflict")],
)
def test_http_problems_take_their_type_and_title_from_the_status(
    status: int, slug: str, title: str
) -> None:
    problem = HttpProblem(status)
    assert (problem.status, problem.slug, problem.title) == (status, slug, title)
    assert problem.type == f"urn:atelier:problem:{slug}"
    assert problem.detail == title  # no detail given: the phrase
    assert HttpProblem(status, "why").detail == "why"
    assert HttpProblem(405, headers={"Allow": "POST"}).headers() == {"Allow": "POST"}


def test_only_our_errors_are_shown_as_they_are() -> None:
    ours = Gone("x")
    assert as_atelier_error(ours, "doing") is ours
    hidden = as_atelier_error(KeyError("secret-key"), "stylizing")
    assert isinstance(hidden, InternalError)
    assert hidden.status == 500 and hidden.type == "urn:atelier:problem:internal"
    assert hidden.detail == "KeyError while stylizing"
    assert "secret" not in hidden.detail


class RequestIds:
    """What AccessLog does first: put a request id in the scope's state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("state", {})["request_id"] = "rid-42"
        await self.app(scope, receive, send)


def tiny_app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.get("/busy")
    async def busy() -> None:
        raise Busy("the queue is full")

    @app.get("/field")
    async def field() -> None:
        raise InvalidField("size", "too large")

    @app.get("/http")
    async def http() -> None:
        raise HTTPException(409, "already done", headers={"X-Why": "done"})

    @app.get("/count")
    async def count(n: int) -> dict[str, int]:
        return {"n": n}

    @app.get("/crash")
    async def crash(request: Request) -> None:
        raise KeyError("secret-key")

    app.add_middleware(RequestIds)
    return app


def client(*, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=tiny_app(), raise_app_exceptions=raise_app_exceptions)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["instance"] == response.request.url.path
    assert body["request_id"] == "rid-42"
    return body


@pytest.mark.anyio
async def test_installed_handlers_answer_our_errors_as_problems() -> None:
    async with client() as http:
        busy = await http.get("/busy")
        field = await http.get("/field")
    body = assert_problem(busy, 503)
    assert body["type"] == "urn:atelier:problem:busy" and body["queue"] == 12
    assert busy.headers["retry-after"] == "7" and busy.headers["x-lane"] == "a"
    assert assert_problem(field, 422)["errors"][0]["field"] == "size"
    assert "retry-after" not in field.headers


@pytest.mark.anyio
async def test_installed_handlers_answer_framework_errors_as_problems() -> None:
    async with client() as http:
        conflict = await http.get("/http")
        missing = await http.get("/nowhere")
        method = await http.post("/busy")
        invalid = await http.get("/count", params={"n": "many"})
        absent = await http.get("/count")
    body = assert_problem(conflict, 409)
    assert body["type"] == "urn:atelier:problem:conflict" and body["detail"] == "already done"
    assert conflict.headers["x-why"] == "done"
    assert assert_problem(missing, 404)["type"] == "urn:atelier:problem:not-found"
    assert_problem(method, 405)
    assert method.headers["allow"] == "GET"
    for response in (invalid, absent):
        problem = assert_problem(response, 422)
        assert problem["type"] == "urn:atelier:problem:validation"
        assert [e["field"] for e in problem["errors"]] == ["n"]


@pytest.mark.anyio
async def test_an_unexpected_exception_is_an_opaque_500_and_reaches_the_server() -> None:
    async with client(raise_app_exceptions=False) as http:
        response = await http.get("/crash")
    body = assert_problem(response, 500)
    assert body["type"] == "urn:atelier:problem:internal" and body["title"] == "Internal error"
    assert body["detail"] == "KeyError while processing the request"
    assert "secret" not in response.text
    assert response.headers["x-request-id"] == "rid-42"
    # re-raised after the answer, so that the server logs the traceback
    async with client() as http:
        with pytest.raises(KeyError, match="secret-key"):
            await http.get("/crash")
