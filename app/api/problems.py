"""RFC 9457 problem details: the one builder every error response goes through."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import AtelierError, InternalError

log = logging.getLogger("atelier.api")

PROBLEM_JSON = "application/problem+json"


# RFC 9110's names, which Python's HTTPStatus only adopted in 3.13 for some codes: the
# problem type of a status must not depend on the interpreter.
_PHRASES = {413: "Content Too Large", 422: "Unprocessable Content",
            431: "Request Header Fields Too Large"}


class HttpProblem(AtelierError):
    """An error of the HTTP protocol itself (unknown route, wrong method, 406, 413)."""

    def __init__(self, status: int, detail: str | None = None, *,
                 headers: dict[str, str] | None = None) -> None:
        phrase = _PHRASES.get(status) or HTTPStatus(status).phrase
        # Sentence case, as the titles of the project's own problem types.
        title = phrase[0] + phrase[1:].lower()
        super().__init__(detail or title)
        self.status, self.title = status, title
        self.slug = phrase.lower().replace(" ", "-")
        self._headers = headers or {}

    def headers(self) -> dict[str, str]:
        return self._headers


class RequestInvalid(AtelierError):
    """Request parameters that failed validation, each error naming its field."""

    status = 422
    slug = "validation"
    title = "Invalid request"

    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors

    def extensions(self) -> dict[str, Any]:
        return {"errors": self.errors}


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "form", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _error(e: dict[str, Any]) -> dict[str, str]:
    loc = tuple(e.get("loc", ()))
    if e.get("type") == "json_invalid":
        # pydantic puts the character offset where a field name would be
        where = f" at character {loc[-1]}" if loc and isinstance(loc[-1], int) else ""
        reason = (e.get("ctx") or {}).get("error")
        return {"field": "body", "type": "json_invalid",
                "message": f"invalid JSON{where}" + (f": {reason}" if reason else "")}
    return {"field": _field_name(loc), "message": e.get("msg", ""), "type": e.get("type", "")}


def request_invalid(exc: RequestValidationError) -> RequestInvalid:
    return RequestInvalid([_error(e) for e in exc.errors()])


def problem_body(error: AtelierError, instance: str, request_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": error.type, "title": error.title, "status": error.status,
                            "detail": error.detail, "instance": instance}
    if request_id:
        body["request_id"] = request_id
    body.update(error.extensions())
    return body


def problem_headers(error: AtelierError, request_id: str | None) -> dict[str, str]:
    headers = dict(error.headers())
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(error.retry_after_s)
    if request_id:
        # Also set by the access log for every response that passes through it; set here
        # for the 500s that Starlette answers outside the middleware stack.
        headers["X-Request-ID"] = request_id
    return headers


def problem_bytes(error: AtelierError, instance: str, request_id: str | None) -> bytes:
    return json.dumps(problem_body(error, instance, request_id)).encode()


def problem_response(error: AtelierError, request: Request) -> Response:
    request_id = getattr(request.state, "request_id", None)
    return Response(problem_bytes(error, request.url.path, request_id),
                    status_code=error.status, media_type=PROBLEM_JSON,
                    headers=problem_headers(error, None))


def problem_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document with every error response as what it really is:
    application/problem+json (FastAPI documents 422 as its own JSON shape), and the 400 of
    an unparseable body on every operation that takes one."""
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version,
                             description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["Problem"] = ProblemDocument.model_json_schema(
            ref_template="#/components/schemas/{model}")
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        problem = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                if "requestBody" in operation:
                    responses.setdefault("400", {"description": "A body that cannot be"
                                                 " parsed."})
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = problem
        app.openapi_schema = schema
        return schema

    return openapi


class ProblemDocument(BaseModel):
    """An RFC 9457 problem details document, as every error answers."""

    type: str = Field(..., examples=["urn:atelier:problem:validation"])
    title: str = Field(..., examples=["Invalid request"])
    status: int = Field(..., examples=[422])
    detail: str = Field(..., examples=["steps: must be between 1 and 2000"])
    instance: str = Field(..., examples=["/stylize"])
    request_id: str | None = Field(None, examples=["4f2c9a..."])
    errors: list[dict[str, str]] | None = Field(
        None, description="Validation errors: `field`, `message`, `type`.")


def install(app: FastAPI) -> None:
    """Handlers on the base classes: every error, ours or the framework's, as problem+json."""

    async def on_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AtelierError)
        if exc.status >= 500 and exc.retry_after_s is None:  # 503s are load, not faults
            log.warning("request failed: %s: %s", type(exc).__name__, exc)
        return problem_response(exc, request)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem_response(
            HttpProblem(exc.status_code, detail, headers=dict(exc.headers or {})), request)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(request_invalid(exc), request)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # Starlette calls this outside the middleware stack and then re-raises, so the
        # server logs the traceback; this only shapes the answer.
        request_id = getattr(request.state, "request_id", None)
        error = InternalError(f"{type(exc).__name__} while processing the request")
        return Response(problem_bytes(error, request.url.path, request_id), status_code=500,
                        media_type=PROBLEM_JSON, headers=problem_headers(error, request_id))

    app.add_exception_handler(AtelierError, on_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)
