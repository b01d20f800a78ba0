"""Health, readiness, the model catalog and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import CatalogDep, PoolDep, SettingsDep
from app.api.schemas import Health, LicenseInfo, ModelInfo, ModelList, Readiness, WorkerInfo
from app.catalog import ModelStatus
from app.errors import AtelierError

router = APIRouter(tags=["system"])


class NotReady(AtelierError):
    status = 503
    slug = "not-ready"
    title = "Not ready"
    retry_after_s = 5

    def __init__(self, reasons: str, models: dict[str, str],
                 workers: list[dict[str, Any]]) -> None:
        super().__init__(reasons)
        self.models, self.workers = models, workers

    def extensions(self) -> dict[str, Any]:
        return {"models": self.models, "workers": self.workers}


@router.get("/healthz", summary="Liveness", response_model=Health)
async def healthz() -> Health:
    """The process is up and its event loop answers."""
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness",
    response_model=Readiness,
    responses={503: {"description": "A worker is dead or the default model is unavailable."}},
)
async def readyz(catalog: CatalogDep, pool: PoolDep, settings: SettingsDep) -> Readiness:
    """Ready when every worker is alive and the default model's weights are loaded."""
    models = {e.name: e.status.value for e in catalog.entries()}
    workers = [WorkerInfo(**w) for w in pool.describe()]
    reasons = [f"worker {w.name} is not alive" for w in workers if not w.alive]
    default = catalog.entry(settings.default_model)
    if default is None:
        reasons.append(f"default model {settings.default_model!r} is not in the catalog")
    elif default.status is not ModelStatus.AVAILABLE:
        reasons.append(default.message or "default model unavailable")
    if reasons:
        raise NotReady("; ".join(reasons), models, [w.model_dump() for w in workers])
    return Readiness(status="ready", workers=workers, models=models)


@router.get("/models", summary="The model catalog", response_model=ModelList)
async def models(catalog: CatalogDep, pool: PoolDep, settings: SettingsDep) -> ModelList:
    """Every model in the catalog, whether its weights are present, and its licence."""
    devices = sorted({str(w["device"]) for w in pool.describe()})
    return ModelList(
        models=[
            ModelInfo(
                name=e.name,
                kind=e.manifest.kind,
                title=e.manifest.title,
                description=e.manifest.description,
                status=e.status.value,
                message=e.message,
                devices=devices if e.status is ModelStatus.AVAILABLE else [],
                output_size=e.manifest.output_size,
                license=LicenseInfo(**e.manifest.license.model_dump()),
                default=e.name == settings.default_model,
            )
            for e in catalog.entries()
        ]
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(pool: PoolDep) -> Response:
    """Queue length, queue wait, batch sizes, compute time, HTTP requests and latencies."""
    return Response(generate_latest(pool.metrics.registry), media_type=CONTENT_TYPE_LATEST)
