"""Style-transfer use cases: uploads in, a job out; progress, previews and results."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from app.catalog import Catalog, Manifest
from app.engines import imaging
from app.engines.imaging import ImageFormat, ImageInputError
from app.engines.style import Cancelled, Progress, StyleOptions, StyleResult
from app.pool import PoolError, StylizeWork, WorkerPool
from app.services.encoding import Encoder
from app.services.errors import ServiceError, require_model
from app.services.jobs import Job, JobStatus, JobStore


class InvalidUpload(ServiceError):
    """An uploaded image that cannot be used; `field` names the form field."""

    def __init__(self, field: str, error: ImageInputError) -> None:
        super().__init__(f"{field}: {error}")
        self.field = field
        self.error = error


@dataclass(frozen=True)
class StyleRequest:
    """What a caller may set; None takes the model's (or the service's) default."""

    steps: int | None = None
    size: int | None = None
    content_weight: float | None = None
    style_weight: float | None = None
    tv_weight: float | None = None
    optimizer: str = "lbfgs"
    init: str = "content"
    style_scale: float = 1.0
    style_blend: tuple[float, ...] | None = None
    preserve_color: str = "none"
    seed: int | None = None
    format: ImageFormat = ImageFormat.PNG
    preview_every: int = 0


def problem_of(exc: BaseException) -> dict[str, Any]:
    """A job's `error`: the same fields a problem+json document would carry."""
    if isinstance(exc, PoolError):
        return {"title": type(exc).__name__, "status": 503, "detail": str(exc)}
    if isinstance(exc, FloatingPointError):
        return {"title": "Diverged", "status": 422,
                "detail": f"{exc}; lower style_weight or use optimizer=lbfgs"}
    return {"title": "Internal error", "status": 500,
            "detail": f"{type(exc).__name__} while stylizing"}


class StylizeService:
    def __init__(
        self, catalog: Catalog, pool: WorkerPool, encoder: Encoder, store: JobStore, *,
        model: str, default_size: int, default_steps: int, progress_every: int,
        max_pixels: int, precision: str = "fp32", channels_last: bool = False,
    ) -> None:
        self.precision = precision
        self.channels_last = channels_last
        self.catalog = catalog
        self.pool = pool
        self.encoder = encoder
        self.store = store
        self.model = model
        self.default_size = default_size
        self.default_steps = default_steps
        self.progress_every = progress_every
        self.max_pixels = max_pixels
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}

    def resolve(self) -> Manifest:
        return require_model(self.catalog, self.model, "vgg")

    def options_for(self, request: StyleRequest, manifest: Manifest) -> StyleOptions:
        return style_options(request, manifest, default_size=self.default_size,
                             default_steps=self.default_steps,
                             progress_every=self.progress_every, precision=self.precision,
                             channels_last=self.channels_last)

    async def submit(self, content: bytes, styles: list[bytes], request: StyleRequest) -> Job:
        manifest = self.resolve()
        decoded = await self.encoder.run(self._decode_all, content, styles)
        options = self.options_for(request, manifest)
        echo = {**asdict(options), "format": request.format.value, "model": manifest.name}
        job = self.store.create(options.steps, echo)
        loop = asyncio.get_running_loop()
        work = StylizeWork(
            model=manifest.name, content=decoded[0], styles=decoded[1:], options=options,
            request_id=job.id, cancel=job.cancel,
            on_start=lambda: loop.call_soon_threadsafe(self._started, job),
            on_progress=lambda p: self._progress_from_worker(loop, job, p),
        )
        try:
            future = self.pool.submit(work)
        except PoolError:
            self.store.discard(job)
            raise
        self._futures[job.id] = future
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(
                lambda: asyncio.ensure_future(self._finished(job, f, request.format)))
        )
        return job

    def _decode_all(self, content: bytes, styles: list[bytes]) -> list[Any]:
        images = []
        for name, data in [("content", content)] + [
            (f"style[{i}]" if len(styles) > 1 else "style", s) for i, s in enumerate(styles)
        ]:
            try:
                images.append(imaging.decode_upload(data, self.max_pixels))
            except ImageInputError as exc:
                raise InvalidUpload(name, exc) from exc
        return images

    def _started(self, job: Job) -> None:
        if job.status is JobStatus.QUEUED:
            job.status = JobStatus.RUNNING
            job.started_at = time.time()
            self.store.publish(job, "progress", self._progress_data(job))

    def _progress_from_worker(
        self, loop: asyncio.AbstractEventLoop, job: Job, progress: Progress
    ) -> None:
        # Runs on the worker thread: encode the small preview here, off the event loop.
        preview = None
        if progress.preview is not None:
            jpeg = imaging.encode(progress.preview, ImageFormat.JPEG)
            preview = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        loop.call_soon_threadsafe(self._progress, job, progress, preview)

    def _progress(self, job: Job, progress: Progress, preview: str | None) -> None:
        if job.status.terminal:
            return
        job.step = progress.step
        job.losses = asdict(progress.losses)
        self.store.publish(job, "progress", self._progress_data(job))
        if preview is not None:
            self.store.publish(job, "preview", {"step": progress.step, "data_url": preview})

    @staticmethod
    def _progress_data(job: Job) -> dict[str, Any]:
        return {"status": job.status.value, "step": job.step, "steps": job.steps,
                "fraction": round(job.fraction, 4), "losses": job.losses,
                "eta_seconds": job.eta_seconds}

    async def _finished(
        self, job: Job, future: concurrent.futures.Future[Any], fmt: ImageFormat
    ) -> None:
        self._futures.pop(job.id, None)
        if future.cancelled():
            self._end(job, JobStatus.CANCELED)
            return
        exc = future.exception()
        if isinstance(exc, Cancelled) or (exc is None and job.cancel.is_set()):
            self._end(job, JobStatus.CANCELED)
            return
        if exc is not None:
            self._end(job, JobStatus.FAILED, error=problem_of(exc))
            return
        result: StyleResult = future.result()
        try:
            data = await self.encoder.run(imaging.encode, result.image, fmt)
            path = self.store.result_path(job, fmt.value)
            await self.encoder.run(path.write_bytes, data)
        except Exception as write_error:
            self._end(job, JobStatus.FAILED, error=problem_of(write_error))
            return
        job.result_path, job.media_type = path, fmt.media_type
        job.step = result.steps
        job.losses = asdict(result.losses)
        self._end(job, JobStatus.SUCCEEDED, seconds=round(result.seconds, 3))

    def _end(self, job: Job, status: JobStatus, *, error: dict[str, Any] | None = None,
             **extra: Any) -> None:
        if job.status.terminal:
            return
        job.status = status
        job.error = error
        job.finished_at = time.time()
        data = {**self._progress_data(job), "error": error, **extra}
        if status is JobStatus.SUCCEEDED:
            data["result"] = f"/jobs/{job.id}/result"
        self.store.publish(job, status.value, data)

    def cancel(self, job: Job) -> None:
        """Queued: dropped at once. Running: stops within one step and frees its memory."""
        if job.status.terminal:
            return
        job.cancel.set()
        future = self._futures.get(job.id)
        if future is not None and future.cancel():
            self._end(job, JobStatus.CANCELED)


def style_options(
    request: StyleRequest, manifest: Manifest, *, default_size: int = 512,
    default_steps: int = 300, progress_every: int = 10, precision: str = "fp32",
    channels_last: bool = False,
) -> StyleOptions:
    """The engine options of a request: its own values, else the model's, else the engine's."""
    d = manifest.defaults
    base = StyleOptions()
    return replace(
        base,
        steps=request.steps or default_steps,
        size=request.size or default_size,
        content_weight=_pick(request.content_weight, d.get("content_weight"),
                             base.content_weight),
        style_weight=_pick(request.style_weight, d.get("style_weight"), base.style_weight),
        tv_weight=_pick(request.tv_weight, d.get("tv_weight"), base.tv_weight),
        adam_lr=float(d.get("adam_lr", base.adam_lr)),
        content_layer=str(d.get("content_layer", base.content_layer)),
        style_layers=tuple(d.get("style_layers", base.style_layers)),
        optimizer=request.optimizer,  # type: ignore[arg-type]
        init=request.init,  # type: ignore[arg-type]
        style_scale=request.style_scale,
        style_blend=request.style_blend,
        preserve_color=request.preserve_color,  # type: ignore[arg-type]
        seed=request.seed if request.seed is not None else 0,
        progress_every=progress_every,
        preview_every=request.preview_every,
        precision=precision,  # type: ignore[arg-type]
        channels_last=channels_last,
    )


def _pick(*values: Any) -> float:
    return float(next(v for v in values if v is not None))
