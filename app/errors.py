"""The project's error vocabulary: every error class declares its problem type once.

Fronts only render these: the HTTP layer as RFC 9457 problem+json, the CLI as a message and
an exit code, a failed job as its `error` document. `status` is an HTTP status code because
problem types are an HTTP notion (RFC 9457) and every front speaks HTTP or maps from it; it
is data on the error, so no layer below the API branches on it.
"""

from __future__ import annotations

from typing import Any

PROBLEM_TYPE_PREFIX = "urn:atelier:problem:"


class AtelierError(Exception):
    """Base of every error a client may see. Subclasses set the class attributes."""

    status: int = 500
    slug: str = "internal"  # the problem type is PROBLEM_TYPE_PREFIX + slug
    title: str = "Internal error"
    # Seconds after which retrying may succeed (503s); None: retrying will not help.
    retry_after_s: int | None = None

    @property
    def type(self) -> str:
        return PROBLEM_TYPE_PREFIX + self.slug

    @property
    def detail(self) -> str:
        return str(self)

    def extensions(self) -> dict[str, Any]:
        """Extra members of the problem document (RFC 9457 §3.2)."""
        return {}

    def headers(self) -> dict[str, str]:
        """Response headers beyond Retry-After (which comes from `retry_after_s`)."""
        return {}


class InvalidField(AtelierError):
    """A request parameter that is out of range or malformed; names the field."""

    status = 422
    slug = "validation"
    title = "Invalid request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def extensions(self) -> dict[str, Any]:
        return {"errors": [{"field": self.field, "message": self.message,
                            "type": "value_error"}]}


class InternalError(AtelierError):
    """Something the code did not expect; the cause is logged, not shown."""

    def __init__(self, what: str) -> None:
        super().__init__(what)


def as_atelier_error(exc: BaseException, doing: str) -> AtelierError:
    """`exc` itself when it is one of ours, else an opaque internal error."""
    if isinstance(exc, AtelierError):
        return exc
    return InternalError(f"{type(exc).__name__} while {doing}")
