"""RFC 9457 problem details for every error response."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.engines.imaging import CorruptImage, ImageTooLarge, NotAnImage
from app.pool import (
    DeadlineExceeded,
    OutOfMemory,
    PoolClosed,
    QueueFull,
    WorkerCrashed,
)
from app.services.errors import ModelNotFound, ModelUnavailable, WrongModelKind
from app.services.jobs import JobLimit
from app.services.stylize import InvalidUpload

log = logging.getLogger("atelier.api")

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    """Raise to answer with a problem+json body."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extensions = extensions


def problem_type(slug: str) -> str:
    return f"urn:atelier:problem:{slug}"


def problem_response(problem: Problem, request: Request) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "instance": request.url.path,
    }
    if problem.detail:
        body["detail"] = problem.detail
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    body.update(problem.extensions)
    return JSONResponse(
        body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in {"body", "query", "path", "header", "form", "cookie"}:
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_problem(exc: RequestValidationError) -> Problem:
    errors = [
        {"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", ""),
         "type": e.get("type", "")}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return Problem(
        422, "Invalid request", detail, type_=problem_type("validation"), errors=errors
    )


def invalid_field(field: str, message: str) -> Problem:
    return Problem(
        422, "Invalid request", f"{field}: {message}", type_=problem_type("validation"),
        errors=[{"field": field, "message": message, "type": "value_error"}],
    )


def from_exception(exc: Exception) -> Problem:
    """Map errors of the layers below to HTTP problems."""
    match exc:
        case Problem():
            return exc
        case QueueFull():
            return Problem(
                503, "Service busy", str(exc), type_=problem_type("queue-full"),
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        case PoolClosed():
            return Problem(
                503, "Shutting down", str(exc), type_=problem_type("shutting-down"),
                headers={"Retry-After": "5"},
            )
        case DeadlineExceeded():
            return Problem(504, "Deadline exceeded", str(exc), type_=problem_type("timeout"))
        case ModelNotFound():
            return Problem(404, "Unknown model", str(exc), type_=problem_type("unknown-model"))
        case WrongModelKind():
            return invalid_field("model", str(exc))
        case ModelUnavailable():
            return Problem(
                503, "Model unavailable", str(exc), type_=problem_type("model-unavailable"),
                headers={"Retry-After": "60"},
            )
        case JobLimit():
            return Problem(
                503, "Too many jobs", str(exc), type_=problem_type("job-limit"),
                headers={"Retry-After": str(exc.retry_after_s)},
            )
        case InvalidUpload(error=ImageTooLarge()):
            return Problem(413, "Image too large", str(exc), type_=problem_type("too-many-pixels"),
                           field=exc.field)
        case InvalidUpload(error=NotAnImage()):
            return Problem(415, "Unsupported image", str(exc),
                           type_=problem_type("unsupported-image"), field=exc.field)
        case InvalidUpload(error=CorruptImage()) | InvalidUpload():
            return Problem(422, "Corrupt image", str(exc), type_=problem_type("corrupt-image"),
                           errors=[{"field": exc.field, "message": str(exc.error),
                                    "type": "image"}])
        case OutOfMemory():
            return Problem(
                503, "Out of device memory", str(exc), type_=problem_type("out-of-memory"),
                headers={"Retry-After": "1"},
            )
        case WorkerCrashed():
            return Problem(500, "Worker crashed", str(exc), type_=problem_type("worker-crashed"))
    return Problem(
        500, "Internal error", f"{type(exc).__name__} while processing the request",
        type_=problem_type("internal"),
    )


def install(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        problem = from_exception(exc)
        if problem.status >= 500 and not isinstance(exc, Problem):
            log.warning("request failed: %s: %s", type(exc).__name__, exc)
        return problem_response(problem, request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        from http import HTTPStatus

        title = HTTPStatus(exc.status_code).phrase
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != title else None
        return problem_response(
            Problem(exc.status_code, title, detail, headers=dict(exc.headers or {})), request
        )

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(validation_problem(exc), request)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path, exc_info=exc)
        return problem_response(from_exception(exc), request)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    for exc_type in (QueueFull, PoolClosed, DeadlineExceeded, ModelNotFound, ModelUnavailable,
                     WrongModelKind, OutOfMemory, WorkerCrashed, JobLimit, InvalidUpload):
        app.add_exception_handler(exc_type, on_problem)
    app.add_exception_handler(Exception, on_unexpected)
