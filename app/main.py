"""The FastAPI application: `create_app(settings)` wires catalog -> pool -> services -> routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi_offline import FastAPIOffline

from app import __version__
from app.api import problems, security
from app.api.disconnect import ClientDisconnected
from app.api.limits import BodySizeLimit
from app.api.middleware import AccessLog, HeadAsGet
from app.api.multipart import WholeMultipart
from app.api.routes import admin, generate, studio, stylize, system
from app.catalog import Catalog
from app.logs import configure
from app.pool import Executor, PoolMetrics
from app.pool.interface import Pool
from app.runtime import build_pool
from app.services.encoding import Encoder
from app.services.generation import GenerationService
from app.services.jobs import JobStore, open_job_store
from app.services.stylize import StylizeService
from app.services.warmup import style_warmup
from app.settings import Settings

log = logging.getLogger("atelier")
ORPHAN_SCAN_S = 5.0  # the driver heartbeat expires after 10 s

DESCRIPTION = """
Image generation on an async GPU worker pool.

* `POST /generate`: new images from a pretrained GAN (seeds, batches, grids).
* `POST /generate/interpolate`: a latent walk between two seeds.
* `POST /stylize`: neural style transfer (Gatys et al.) on the Caffe VGG19, as a job with
  live progress (`/jobs/{id}`, `/jobs/{id}/events`, `/jobs/{id}/result`).

Every error is an RFC 9457 `application/problem+json` document.
"""


async def _purge_expired_jobs(store: JobStore, ttl_s: float) -> None:
    while True:
        await asyncio.sleep(min(30.0, max(0.05, ttl_s / 4)))
        store.purge_expired()


async def _adopt_orphaned_jobs(stylize: StylizeService) -> None:
    """With a shared store, jobs another server gave back or left when it died (its
    heartbeat expired) are run here, not only when some server starts."""
    while True:
        await asyncio.sleep(ORPHAN_SCAN_S)
        try:
            adopted = await stylize.adopt_orphans()
        except Exception:  # the store is unreachable: try again at the next scan
            log.exception("could not scan for orphaned jobs")
            continue
        if adopted:
            log.info("adopted orphaned jobs", extra={"fields": {"jobs": adopted}})


def _with_configured_values(
    openapi: Callable[[], dict[str, Any]], settings: Settings
) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document with this server's values: `n`'s maximum is
    `ATELIER_MAX_IMAGES_PER_REQUEST`, and the default GAN's own recommended truncation (its
    manifest's `[defaults] truncation`) is the example (a fixed one would suit one model)."""
    def with_examples() -> dict[str, Any]:
        schema = openapi()
        generate = schema["components"]["schemas"].get("GenerateRequest", {})
        if "n" in generate.get("properties", {}):
            generate["properties"]["n"]["maximum"] = settings.max_images_per_request
        manifest = Catalog(settings.catalog_dir, settings.model_dir).manifests.get(
            settings.default_model)
        truncation = manifest.defaults.get("truncation") if manifest is not None else None
        if truncation is not None:
            for name in ("GenerateRequest", "InterpolateRequest"):
                properties = schema["components"]["schemas"].get(name, {}).get("properties", {})
                if "truncation" in properties:
                    properties["truncation"]["examples"] = [truncation]
        return schema

    return with_examples


def create_app(
    settings: Settings | None = None,
    *,
    executor_factory: Callable[[str], Executor] | None = None,
    pool_factory: Callable[[Settings, Catalog, PoolMetrics], Pool] | None = None,
) -> FastAPI:
    """Build the app. `executor_factory` replaces the device runtime (tests, other engines);
    `pool_factory` replaces the local pool itself (the Ray Serve backend's RemotePool)."""
    settings = settings or Settings()
    configure(settings.log_format, settings.log_level)
    metrics = PoolMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        catalog = Catalog(settings.catalog_dir, settings.model_dir)
        for entry in catalog.entries():
            if entry.message:
                log.warning(entry.message)
        pool: Pool
        if pool_factory is not None:
            pool = pool_factory(settings, catalog, metrics)
        else:
            pool = build_pool(settings, catalog, executor_factory=executor_factory,
                              metrics=metrics, style_warmup=style_warmup(settings, catalog))
        await asyncio.to_thread(pool.start)
        encoder = Encoder(settings.encode_threads)
        decoder = Encoder(settings.decode_threads)
        app.state.catalog = catalog
        app.state.pool = pool
        app.state.generation = GenerationService(
            catalog, pool, encoder, max_images=settings.max_images_per_request)
        store = open_job_store(settings)
        stylize = StylizeService(catalog, pool, encoder, store, settings, decoder=decoder)
        app.state.stylize = stylize
        resumed = await stylize.resume_unfinished()
        janitors = [asyncio.create_task(_purge_expired_jobs(store, settings.job_ttl_s)),
                    asyncio.create_task(_adopt_orphaned_jobs(stylize))]
        log.info("ready", extra={"fields": {"workers": pool.describe(), "jobs": len(store),
                                            "jobs_resumed": resumed}})
        try:
            yield
        finally:
            for janitor in janitors:
                janitor.cancel()
            # Served by app.serving, the drain already ran when the signal came; otherwise
            # (tests, other servers) unfinished jobs are re-queued for the next start here.
            await stylize.drain(0)
            abandoned = await asyncio.to_thread(pool.shutdown, 0)
            store.close()
            encoder.close()
            decoder.close()
            log.info("stopped", extra={"fields": {"abandoned": abandoned}})

    app = FastAPIOffline(
        title="Atelier",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        redoc_url=None,
        # FastAPI's own OpenTelemetry instruments: off. The service's metrics are Prometheus
        # (/metrics) and its traces are request ids in the access log; with the instruments
        # on, FastAPI asks OpenTelemetry on every request whether a provider is set, ~4 µs
        # of the ~100 a /generate request costs (bench/RESULTS.md).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    problems.install(app)
    app.openapi = _with_configured_values(  # type: ignore[method-assign]
        problems.problem_openapi(app), settings)

    async def on_disconnect(_request: Request, _exc: Exception) -> Response:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    app.add_exception_handler(ClientDisconnected, on_disconnect)
    # The routers' routes go straight into the app's router: FastAPI's `include_router`
    # puts each router behind a layer of its own that matches every request twice, ~12 µs
    # of the ~170 a /generate request costs (bench/RESULTS.md). These routers have no
    # prefix, dependencies or limits for an include to add (/openapi.json is the same).
    for module in (generate, stylize, system, admin, studio):
        app.router.routes.extend(module.router.routes)
    app.mount("/studio", studio.assets, name="studio")
    app.add_middleware(HeadAsGet)
    app.add_middleware(WholeMultipart, paths=("/stylize",))
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes, paths=("/stylize",))
    # JSON bodies of /generate are a few hundred bytes; nothing needs more than this.
    app.add_middleware(BodySizeLimit, max_bytes=64 * 1024, paths=("/generate",))
    security.install(app, settings)
    app.add_middleware(AccessLog, registry=metrics.registry)
    return app
