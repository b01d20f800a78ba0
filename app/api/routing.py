"""The route class of the JSON routes: a body sent as anything but JSON is a 415, and a valid
JSON body is parsed by pydantic-core straight from the request's bytes.

FastAPI's request handler spends ~26 µs on every request before the endpoint runs (the body
read through `json.loads`, `email.message` parsing of Content-Type, query parameters, headers
and cookies taken apart for parameters the route does not have): on /generate that was a
sixth of all the request cost (bench/RESULTS.md). For an endpoint that takes only the
request and one JSON body model, `JsonBodyRoute` validates a JSON body with
`Model.model_validate_json` and calls the endpoint at once. Everything else (no body, invalid
JSON, invalid fields) is handed to FastAPI's own handler with the same request, so its answer
is FastAPI's to the byte: `tests/test_routing.py` sends the same bodies through both and
compares. A body that cannot be read (the client left mid-body) is FastAPI's 400 too.

The one answer that differs from FastAPI's: a body sent without a JSON Content-Type (curl's
`-d` sends `application/x-www-form-urlencoded`) is refused 415, naming the type to send,
where FastAPI said 422 "Input should be a valid dictionary".

Any other endpoint shape (dependencies, other parameters, validators on the body parameter, a
sync function, a return value that is not a `Response`) keeps FastAPI's handler after that
check; so does a route built through `include_router` (whose dependencies the route itself
does not list) and one with `strict_content_type=False`. Routes of this class go straight
into the app's router (app/main.py).
"""

from __future__ import annotations

import email.message
import inspect
import types
import typing
from collections.abc import Callable, Coroutine
from typing import Any

import fastapi.routing
from fastapi import HTTPException, Request, Response, params
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from app.api.deps import header_of
from app.errors import AtelierError

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

JSON_MEDIA_TYPE = "application/json"


class UnsupportedMediaType(AtelierError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"

    def __init__(self, sent: str | None) -> None:
        how = f"as {sent}" if sent else "without a Content-Type"
        super().__init__(f"the body must be JSON, sent with Content-Type: {JSON_MEDIA_TYPE}"
                         f" (this one came {how})")

    def headers(self) -> dict[str, str]:
        # The media types a POST takes (W3C LDP's Accept-Post; RFC 9110 §15.5.16 asks a 415
        # to say what would be accepted).
        return {"Accept-Post": JSON_MEDIA_TYPE}


def _is_json(content_type: str) -> bool:
    """FastAPI's rule: `application/json` or `application/<anything>+json`, with or without
    parameters, as `email.message` parses the header. The usual value is matched at once
    (as `email.message` would: the part before `;`, lower case, stripped); any other goes
    through `email.message` itself (~3 µs), so the two cannot disagree."""
    if content_type.partition(";")[0].lower().strip() == JSON_MEDIA_TYPE:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


async def _read_body(request: Request) -> bytes:
    """The body, or FastAPI's 400 when it cannot be read (the client left mid-body, say):
    FastAPI turns every failure of that read but an HTTPException into this 400."""
    try:
        return await request.body()
    except HTTPException:
        raise  # a limit refusing the body (BodySizeLimit's 413): answered as it is
    except Exception as exc:
        raise HTTPException(status_code=400, detail="There was an error parsing the body") \
            from exc


def _built_for_an_include(route: APIRoute) -> bool:
    """Whether FastAPI is building this route's handler for `include_router`, whose
    dependencies and settings are not on the route itself. FastAPI 0.165 says so in a
    context variable; without it (another FastAPI), assume so: the safe answer."""
    context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
    if context_var is None:
        return True
    context = context_var.get()
    return context is not None and getattr(context, "original_route", None) is route


class JsonBodyRoute(APIRoute):
    def _json_body(self) -> bool:
        """Whether the endpoint takes a JSON body (not a form) and FastAPI refuses bodies
        without a JSON Content-Type (its default)."""
        info = self.body_field.field_info if self.body_field is not None else None
        strict = getattr(self.strict_content_type, "value", self.strict_content_type)
        return (isinstance(info, params.Body) and not isinstance(info, params.Form)
                and strict is True)

    def _fast_body(self) -> tuple[str, str, type[BaseModel]] | None:
        """(request parameter, body parameter, body model) when this route's endpoint takes
        just those two, is a coroutine function and returns a Response; else None."""
        dependant = self.dependant
        if (dependant.request_param_name is None or len(dependant.body_params) != 1
                or dependant.dependencies
                or len(inspect.signature(self.endpoint).parameters) != 2
                or not inspect.iscoroutinefunction(self.endpoint)):
            return None
        hints = typing.get_type_hints(self.endpoint)
        returned = hints.get("return")
        if not (isinstance(returned, type) and issubclass(returned, Response)):
            return None
        field = dependant.body_params[0]
        info = field.field_info
        if not self._json_body() or getattr(info, "embed", False) or info.metadata:
            return None  # a form, a body nested under its name, or validators of its own
        members = _union_members(info.annotation)
        models = [t for t in members if isinstance(t, type) and issubclass(t, BaseModel)]
        if len(models) != 1 or any(t not in (models[0], types.NoneType) for t in members):
            return None  # only `Model` or `Model | None`: a wider union is FastAPI's to pick
        return dependant.request_param_name, field.name, models[0]

    def get_route_handler(self) -> Handler:
        fastapi_handler: Handler = super().get_route_handler()
        if _built_for_an_include(self) or not self._json_body():
            return fastapi_handler
        fast = self._fast_body()
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            content_type = header_of(request, b"content-type")
            if content_type is None or not _is_json(content_type):
                if await _read_body(request):
                    raise UnsupportedMediaType(content_type[:100] if content_type else None)
            elif fast is not None:
                raw = await _read_body(request)
                if raw:
                    try:
                        body = fast[2].model_validate_json(raw)
                    except ValidationError:
                        pass  # FastAPI's handler words the error, as on every route
                    else:
                        response: Response = await endpoint(
                            **{fast[0]: request, fast[1]: body})
                        return response
            return await fastapi_handler(request)  # the body read above is kept on `request`

        return handler


def _union_members(annotation: Any) -> tuple[Any, ...]:
    """The types of `A | B` or `Optional[A]`; `(annotation,)` for any other annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)
