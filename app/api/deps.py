"""Dependencies: the objects the lifespan built, and per-request deadlines."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.api import security
from app.catalog import Catalog
from app.errors import InvalidField
from app.pool import Pool
from app.services.generation import GenerationService
from app.services.jobs import Job
from app.services.stylize import StylizeService
from app.settings import Settings


# Every dependency is `async def`: FastAPI runs a plain `def` one on its thread pool, which
# cost /generate about a quarter of a millisecond per request in thread switches
# (bench/generate.py), and the job store must only be touched from the event loop's thread.
async def get_settings(request: Request) -> Settings:
    value: Settings = request.app.state.settings
    return value


async def get_catalog(request: Request) -> Catalog:
    value: Catalog = request.app.state.catalog
    return value


async def get_pool(request: Request) -> Pool:
    value: Pool = request.app.state.pool
    return value


async def get_generation(request: Request) -> GenerationService:
    value: GenerationService = request.app.state.generation
    return value


async def get_stylize(request: Request) -> StylizeService:
    value: StylizeService = request.app.state.stylize
    return value


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
PoolDep = Annotated[Pool, Depends(get_pool)]
GenerationDep = Annotated[GenerationService, Depends(get_generation)]
StylizeDep = Annotated[StylizeService, Depends(get_stylize)]


async def request_timeout(
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
        raise InvalidField("X-Request-Timeout", "must be a number of seconds") from None
    if not 0 < timeout <= settings.max_request_timeout_s:
        raise InvalidField(
            "X-Request-Timeout", f"must be > 0 and <= {settings.max_request_timeout_s:g} seconds"
        )
    return timeout


TimeoutDep = Annotated[float, Depends(request_timeout)]


async def get_owner(request: Request) -> str | None:
    """The API key's id (set by the security middleware when keys are on), else None."""
    return security.principal(request)


OwnerDep = Annotated[str | None, Depends(get_owner)]


async def get_job(job_id: str, service: StylizeDep, owner: OwnerDep) -> Job:
    """The job named in the path, if the caller may see it; resolved before a response
    starts, so an unknown id is a 404 even on the event stream."""
    return service.store.get(job_id, owner)


JobDep = Annotated[Job, Depends(get_job)]
