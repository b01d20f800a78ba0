"""Local runs: the server's own services (GenerationService, StylizeService) on a pool that
`build_pool` wires from the settings, adjusted for one user on this machine. The limits are
the server's (`ATELIER_MAX_SIZE`, `ATELIER_MAX_STEPS`, ...): the services check them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app.catalog import Catalog
from app.cli.errors import FAILED, INTERRUPTED, CliError
from app.cli.report import Generated, JobProgress
from app.engines.imaging import ImageFormat
from app.pool import WorkerPool
from app.runtime import GENERATE_LANE, STYLIZE_LANE, build_pool
from app.services.encoding import Encoder
from app.services.generation import GenerationService
from app.services.jobs import EmbeddedJobStore
from app.services.params import GenerateRequest, StyleParams
from app.services.stylize import StylizeService
from app.settings import Settings

# How long an interrupted run waits for its job, then its workers, to stop. A cancelled job
# stops within one step; exiting while a worker is still inside torch can abort the process
# ("terminate called without an active exception"), so the wait is generous.
STOP_TIMEOUT_S = 120.0


def local_settings(settings: Settings) -> Settings:
    """The server's settings for one local run: the first device only, torch's default
    threads (the machine is this run's), one job, and a progress event every step."""
    return settings.model_copy(update={
        "devices": settings.device_list()[0],
        "torch_threads": 0,
        "workers_per_device": 1,
        "stylize_workers_per_device": 1,
        "style_batch_size": 1,
        "max_active_jobs": 1,
        "progress_every": 1,
    })


class _Stderr(logging.Handler):
    """One line per record on the current sys.stderr; tracebacks only when debugging (the
    user sees the error itself from the command)."""

    def __init__(self, debug: bool) -> None:
        super().__init__("DEBUG" if debug else "WARNING")
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"atelier: {record.levelname.lower()}: {record.getMessage()}"
            if self.debug and record.exc_info:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
            print(line, file=sys.stderr)
        except Exception:
            self.handleError(record)


def _configure_logging(settings: Settings) -> None:
    """The pool's and engines' warnings as one line each (ATELIER_LOG_LEVEL=DEBUG: all)."""
    debug = settings.log_level.upper() == "DEBUG"
    root = logging.getLogger("atelier")
    root.handlers[:] = [_Stderr(debug)]
    root.setLevel("DEBUG" if debug else "WARNING")
    root.propagate = False


@contextlib.contextmanager
def _started(
    pool: WorkerPool, grace_s: float, cancel_jobs: Callable[[], None] = lambda: None
) -> Iterator[None]:
    """Start the pool; on the way out (also on Ctrl-C) cancel what still runs, stop the
    pool and wait for its threads."""
    try:
        try:
            pool.start()
        except RuntimeError as exc:
            cause = exc.__cause__ or exc
            raise CliError(f"the models failed to load: {cause}", FAILED) from None
        yield
    finally:
        cancel_jobs()
        pool.shutdown(grace_s)
        for worker in pool.workers:
            if worker.thread is not None:
                worker.thread.join(STOP_TIMEOUT_S)


def _session(settings: Settings, lane: str) -> tuple[Settings, Catalog, WorkerPool, Encoder]:
    settings = local_settings(settings)
    _configure_logging(settings)
    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    pool = build_pool(settings, catalog, lanes=(lane,))
    return settings, catalog, pool, Encoder(settings.encode_threads)


# ---- generate ------------------------------------------------------------------------


def generate(settings: Settings, request: GenerateRequest, fmt: ImageFormat) -> Generated:
    settings, catalog, pool, encoder = _session(settings, GENERATE_LANE)
    service = GenerationService(catalog, pool, encoder,
                                max_images=settings.max_images_per_request)
    model = service.resolve(request.model or settings.default_model).name  # before loading

    async def run() -> Generated:
        generated = await service.generate(
            model=model, n=request.n, seed=request.seed, truncation=request.truncation,
            timeout_s=settings.max_request_timeout_s,
        )
        return Generated(await service.encode(generated, fmt), generated.model, generated.seeds)

    try:
        with _started(pool, settings.shutdown_grace_s):
            return asyncio.run(run())
    finally:
        encoder.close()


# ---- stylize -------------------------------------------------------------------------


def _json(data: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return data.model_dump(mode="json") if isinstance(data, BaseModel) else data


async def _run_job(
    service: StylizeService, content: bytes, styles: list[bytes], params: StyleParams,
    make_progress: Callable[[int], JobProgress],
) -> tuple[dict[str, Any], bytes]:
    job = None
    try:
        job = await service.submit(content, styles, params)
        progress = make_progress(job.steps)
        document = None
        try:
            async for event in service.store.follow(job):
                document = progress(event.type, _json(event.data)) or document
        finally:
            progress.close()
        image, _media_type = await service.result(job)
        return document or _json(job.document()), image
    except asyncio.CancelledError:
        # Ctrl-C: asyncio cancels this task. Cancel the job and wait until its worker has
        # let go of it (within one step), while the loop still takes the worker's callbacks.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        if job is not None:
            service.cancel(job)
            await service.store.wait(job, timeout_s=STOP_TIMEOUT_S)
        raise CliError("interrupted; the job was cancelled", INTERRUPTED) from None


def stylize(
    settings: Settings, content: bytes, styles: list[bytes], params: StyleParams,
    make_progress: Callable[[int], JobProgress],
) -> tuple[dict[str, Any], bytes]:
    """(the final job document, the encoded image)."""
    settings, catalog, pool, encoder = _session(settings, STYLIZE_LANE)
    with tempfile.TemporaryDirectory(prefix="atelier-") as scratch:
        # A results folder of its own, gone with the run.
        store = EmbeddedJobStore(max_active=1, max_jobs=1, ttl_s=settings.job_ttl_s,
                                 results_dir=Path(scratch) / "results")
        service = StylizeService(catalog, pool, encoder, store, settings)
        # The model and the bounds, checked before minutes of loading and computing.
        service.options_for(params, len(styles), service.resolve())
        try:
            # Closing the store sets every job's cancel (a second Ctrl-C, say, leaves the
            # loop before the job has seen the first).
            with _started(pool, settings.shutdown_grace_s, store.close):
                return asyncio.run(
                    _run_job(service, content, styles, params, make_progress))
        finally:
            encoder.close()
