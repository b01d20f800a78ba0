"""The route class of the JSON routes: a body sent as anything but JSON is a 415, and a valid
JSON body is parsed by pydantic-core straight from the request's bytes.

FastAPI's request handler spends ~26 µs on every request before the endpoint runs (the body
read through `json.loads`, `email.message` parsing of Content-Type, query parameters, headers
and cookies taken apart for parameters the route does not have, two `AsyncExitStack`s for
dependencies it does not use): on /generate that was a sixth of all the request cost
(bench/RESULTS.md). For an endpoint that takes only the request and one JSON body model,
`JsonBodyRoute` validates a JSON body with `Model.model_validate_json` and calls the
endpoint at once. Everything else (no body, invalid JSON, invalid fields) is handed to
FastAPI's own handler with the same request, so its answer is FastAPI's to the byte:
`tests/test_routing.py` sends the same bodies through both and compares.

The one answer that differs from FastAPI's: a body sent without a JSON Content-Type (curl's
`-d` sends `application/x-www-form-urlencoded`) is refused 415, naming the type to send,
where FastAPI said 422 "Input should be a valid dictionary".

Any other endpoint shape (dependencies, query, header, path or cookie parameters, a sync
function, a return value that is not a `Response`) keeps FastAPI's handler after that check.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response, params
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

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
        return {"Accept-Post": JSON_MEDIA_TYPE}  # RFC 9110 §15.5.16: what would be taken


def _content_type(request: Request) -> bytes | None:
    value: bytes
    for key, value in request.scope["headers"]:
        if key == b"content-type":
            return value
    return None


def _is_json(content_type: bytes) -> bool:
    """`application/json` or `application/<anything>+json`, with or without parameters
    (FastAPI's rule)."""
    media = content_type.partition(b";")[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json"))


class JsonBodyRoute(APIRoute):
    def _json_body(self) -> bool:
        """Whether the endpoint takes a JSON body (not a form)."""
        info = self.body_field.field_info if self.body_field is not None else None
        return isinstance(info, params.Body) and not isinstance(info, params.Form)

    def _fast_body(self) -> tuple[str, str, type[BaseModel]] | None:
        """(request parameter, body parameter, body model) when this route's endpoint takes
        just those two, is a coroutine function and returns a Response; else None."""
        dependant = self.dependant
        if (dependant.request_param_name is None or len(dependant.body_params) != 1
                or dependant.dependencies or dependant.path_params or dependant.query_params
                or dependant.header_params or dependant.cookie_params
                or dependant.response_param_name or dependant.background_tasks_param_name
                or not inspect.iscoroutinefunction(self.endpoint)):
            return None
        hints = typing.get_type_hints(self.endpoint)
        returned = hints.get("return")
        if not (isinstance(returned, type) and issubclass(returned, Response)):
            return None
        field = dependant.body_params[0]
        info = field.field_info
        if not isinstance(info, params.Body) or isinstance(info, params.Form) or info.embed:
            return None  # a form, or a body nested under the parameter's name
        models = [t for t in _union_members(info.annotation)
                  if isinstance(t, type) and issubclass(t, BaseModel)]
        if len(models) != 1:
            return None
        return dependant.request_param_name, field.name, models[0]

    def get_route_handler(self) -> Handler:
        fastapi_handler: Handler = super().get_route_handler()
        if not self._json_body():
            return fastapi_handler
        fast = self._fast_body()
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            content_type = _content_type(request)
            if content_type is None or not _is_json(content_type):
                if await request.body():
                    sent = content_type.decode("latin-1")[:100] if content_type else None
                    raise UnsupportedMediaType(sent)
            elif fast is not None:
                raw = await request.body()
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
