"""Dependencies: the objects the lifespan built, and per-request deadlines."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.problems import invalid_field
from app.catalog import Catalog
from app.pool import WorkerPool
from app.services.generation import GenerationService
from app.services.stylize import StylizeService
from app.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def get_pool(request: Request) -> WorkerPool:
    return request.app.state.pool


def get_generation(request: Request) -> GenerationService:
    return request.app.state.generation


def get_stylize(request: Request) -> StylizeService:
    return request.app.state.stylize


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PoolDep = Annotated[WorkerPool, Depends(get_pool)]
GenerationDep = Annotated[GenerationService, Depends(get_generation)]
StylizeDep = Annotated[StylizeService, Depends(get_stylize)]


def request_timeout(
    settings: SettingsDep,
    x_request_timeout: Annotated[
        str | None,
        Header(
            description="Seconds this request may take before it is answered 504"
            " (default `ATELIER_REQUEST_TIMEOUT_S`, at most `ATELIER_MAX_REQUEST_TIMEOUT_S`).",
            examples=["10"],
        ),
    ] = None,
) -> float:
    if x_request_timeout is None:
        return settings.request_timeout_s
    try:
        timeout = float(x_request_timeout)
    except ValueError:
        raise invalid_field("X-Request-Timeout", "must be a number of seconds") from None
    if not 0 < timeout <= settings.max_request_timeout_s:
        raise invalid_field(
            "X-Request-Timeout", f"must be > 0 and <= {settings.max_request_timeout_s:g} seconds"
        )
    return timeout


TimeoutDep = Annotated[float, Depends(request_timeout)]
