"""Conditional and partial GETs of an immutable resource held in memory (RFC 9110 §13, §14).

A finished job's result never changes, so its validator is a strong ETag fixed by the job:
`If-None-Match` answers 304, and `Range` (one range; `If-Range` honoured) answers 206, so
that browsers revalidate for free and interrupted downloads resume (`curl -C -`). Starlette's
`FileResponse` does this for files; results live in the job store as bytes.
"""

from __future__ import annotations

import re
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import Response

from app.api.problems import HttpProblem

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
# Past any resource's size; longer numbers are read as this (`int` refuses over 4300 digits,
# and the header may hold 16 KiB of them).
_HUGE = 10**18


def _number(digits: str) -> int:
    return int(digits) if len(digits) <= 18 else _HUGE


def _matches(header: str, etag: str) -> bool:
    """Weak comparison (§8.8.3.2), as If-None-Match uses."""
    wanted = {tag.strip().removeprefix("W/") for tag in header.split(",")}
    return "*" in wanted or etag in wanted


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The one byte range `header` asks for, as (first, last) inclusive; None to send the
    whole resource: several ranges, or a header this parser does not read (§14.2: a
    server may ignore Range). Raises 416 when the range lies wholly past the end."""
    found = _RANGE.fullmatch(header.strip())
    if found is None or found.group(1) == found.group(2) == "":
        return None
    first_text, last_text = found.groups()
    if first_text == "":  # a suffix: the last N bytes
        suffix = _number(last_text)
        if suffix == 0:
            raise _unsatisfiable(size)
        return max(0, size - suffix), size - 1
    first = _number(first_text)
    asked_last = None if last_text == "" else _number(last_text)
    if asked_last is not None and asked_last < first:
        return None  # invalid: ignored
    last = size - 1 if asked_last is None else min(asked_last, size - 1)
    if first >= size:
        raise _unsatisfiable(size)
    return first, last


def _unsatisfiable(size: int) -> HttpProblem:
    return HttpProblem(416, f"the range lies past the end of the {size}-byte resource",
                       headers={"Content-Range": f"bytes */{size}"})


def immutable_response(request: Request, data: bytes, media_type: str, *, etag: str,
                       modified: float | None = None,
                       headers: dict[str, str] | None = None) -> Response:
    """200, 206 or 304 for `data` whose ETag (quoted) is `etag` and never changes. The
    conditions apply to GET and HEAD only (the answer to a POST carries the validators)."""
    validators = {"ETag": etag, "Accept-Ranges": "bytes", **(headers or {})}
    if modified is not None:
        validators["Last-Modified"] = formatdate(modified, usegmt=True)
    if request.method not in ("GET", "HEAD"):
        return Response(data, media_type=media_type, headers=validators)
    condition = request.headers.get("if-none-match")
    if condition is not None and _matches(condition, etag):
        return Response(status_code=304, headers=validators)
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is not None and if_range in (None, etag):
        span = byte_range(wanted, len(data))
        if span is not None:
            first, last = span
            return Response(data[first:last + 1], status_code=206, media_type=media_type,
                            headers={**validators,
                                     "Content-Range": f"bytes {first}-{last}/{len(data)}"})
    return Response(data, media_type=media_type, headers=validators)
