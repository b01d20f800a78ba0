"""What crosses between an ingress and an engine replica besides tensors: errors as their
problem fields (exception classes with their own constructors do not survive pickling, and
the client must see the same problem document as with the local pool) and work statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.engines.style import Cancelled
from app.errors import AtelierError, as_atelier_error
from app.pool import WorkStats

CANCELLED = "cancelled"  # the slug that stands for engines.style.Cancelled


@dataclass(frozen=True)
class Problem:
    status: int
    slug: str
    title: str
    detail: str
    retry_after_s: int | None

    @classmethod
    def of(cls, exc: BaseException, doing: str) -> Problem:
        if isinstance(exc, Cancelled):
            return cls(499, CANCELLED, "Cancelled", "the job was cancelled", None)
        error = as_atelier_error(exc, doing)
        return cls(error.status, error.slug, error.title, error.detail, error.retry_after_s)

    def error(self) -> Exception:
        """The exception the ingress raises in place of the replica's."""
        if self.slug == CANCELLED:
            return Cancelled()
        return RemoteError(self)


class RemoteError(AtelierError):
    """An engine replica's error, with the problem type it had there."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail)
        self.status, self.slug, self.title = problem.status, problem.slug, problem.title
        self.retry_after_s = problem.retry_after_s


def stats_dict(stats: WorkStats) -> dict[str, Any]:
    return asdict(stats)


def copy_stats(into: WorkStats, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(into, name, value)
