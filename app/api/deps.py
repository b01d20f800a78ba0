"""Dependencies: the objects the lifespan built, and per-request deadlines."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

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


def header_parameter(name: str, description: str, example: str) -> dict[str, Any]:
    """An optional string header in a route's `openapi_extra`, documented exactly as FastAPI
    documents a `Header()` parameter of type `str | None`, for the hot routes that read
    their headers themselves: FastAPI's `Header` and `Depends` parameters cost /generate
    45-60 µs per request (bench/RESULTS.md, null generator)."""
    return {
        "name": name.lower(), "in": "header", "required": False, "description": description,
        "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": name,
                   "description": description, "examples": [example]},
    }


REQUEST_TIMEOUT_HEADER = "X-Request-Timeout"
_REQUEST_TIMEOUT_KEY = REQUEST_TIMEOUT_HEADER.lower().encode()
# Routes that take `TimeoutDep` list this in `openapi_extra={"parameters": [...]}`.
REQUEST_TIMEOUT_PARAMETER = header_parameter(
    REQUEST_TIMEOUT_HEADER,
    "Seconds this request may take before it is answered 504"
    " (default `ATELIER_REQUEST_TIMEOUT_S`, at most `ATELIER_MAX_REQUEST_TIMEOUT_S`).",
    "10",
)


def header_of(request: Request, name: bytes) -> str | None:
    """The first value of header `name` (lower case), read from the ASGI scope: for the hot
    routes, without the `Headers` mapping (~1 µs per look-up, and a KeyError when absent)."""
    value: bytes
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def timeout_of(request: Request) -> float:
    """The request's deadline in seconds: its `X-Request-Timeout` header, else the default."""
    settings: Settings = request.app.state.settings
    value = header_of(request, _REQUEST_TIMEOUT_KEY)
    if value is None:
        return settings.request_timeout_s
    try:
        timeout = float(value)
    except ValueError:
        raise InvalidField(REQUEST_TIMEOUT_HEADER, "must be a number of seconds") from None
    if not 0 < timeout <= settings.max_request_timeout_s:
        raise InvalidField(
            REQUEST_TIMEOUT_HEADER,
            f"must be > 0 and <= {settings.max_request_timeout_s:g} seconds",
        )
    return timeout


async def request_timeout(request: Request) -> float:
    """`timeout_of` as a dependency: a bad header is refused before the body is validated."""
    return timeout_of(request)


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
