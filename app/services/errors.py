"""Errors of the use-case layer; each declares its problem type (see app.errors)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.errors import AtelierError, InvalidField

if TYPE_CHECKING:
    from app.catalog import Catalog, Manifest


class ModelNotFound(AtelierError):
    status = 404
    slug = "unknown-model"
    title = "Unknown model"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no model named {name!r}; known models: {', '.join(known) or 'none'}")
        self.name = name


class ModelUnavailable(AtelierError):
    status = 503
    slug = "model-unavailable"
    title = "Model unavailable"
    retry_after_s = 60

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class WrongModelKind(InvalidField):
    def __init__(self, name: str, kind: str, wanted: str) -> None:
        super().__init__("model", f"model {name!r} is a {kind} model; this endpoint needs a"
                         f" {wanted} model")


def require_model(catalog: Catalog, name: str, kind: str) -> Manifest:
    """The manifest of an available model of this kind, or the error that says why not."""
    from app.catalog import ModelStatus

    entry = catalog.entry(name)
    if entry is None:
        raise ModelNotFound(name, [e.name for e in catalog.entries()])
    if entry.manifest.kind != kind:
        raise WrongModelKind(name, entry.manifest.kind, kind)
    if entry.status is not ModelStatus.AVAILABLE:
        raise ModelUnavailable(name, entry.message or "unavailable")
    return entry.manifest
