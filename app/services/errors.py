"""Errors of the use-case layer, independent of the transport that reports them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.catalog import Catalog, Manifest


class ServiceError(Exception):
    pass


class ModelNotFound(ServiceError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no model named {name!r}; known models: {', '.join(known) or 'none'}")
        self.name = name


class ModelUnavailable(ServiceError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class WrongModelKind(ServiceError):
    def __init__(self, name: str, kind: str, wanted: str) -> None:
        super().__init__(f"model {name!r} is a {kind} model; this endpoint needs a {wanted} model")
        self.name = name


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
