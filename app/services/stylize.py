"""Style-transfer use cases: uploads in, a job out; progress, previews and results."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
from dataclasses import replace
from typing import Any

from app.catalog import Catalog, Manifest
from app.engines import imaging
from app.engines.decoding import ImageInputError, decode_upload
from app.engines.imaging import ImageFormat
from app.engines.style import Cancelled, Progress, StyleOptions, StyleResult
from app.errors import AtelierError, InvalidField, as_atelier_error
from app.pool import WorkerPool
from app.runtime import StylizeWork
from app.services.encoding import Encoder
from app.services.errors import require_model
from app.services.jobs import Job, JobFailed, JobNotFinished, JobStatus, JobStore, Losses
from app.services.params import StyleParams
from app.settings import Settings

log = logging.getLogger("atelier.stylize")


class Diverged(AtelierError):
    status = 422
    slug = "diverged"
    title = "Diverged"

    def __init__(self, cause: FloatingPointError) -> None:
        super().__init__(f"{cause}; lower style_weight or use optimizer=lbfgs")


def _job_error(exc: BaseException) -> AtelierError:
    if isinstance(exc, FloatingPointError):
        return Diverged(exc)
    return as_atelier_error(exc, "stylizing")


def _losses(losses: Any) -> Losses:
    return Losses(content=losses.content, style=losses.style, tv=losses.tv, total=losses.total)


def engine_options(
    params: StyleParams, styles: int, manifest: Manifest, settings: Settings
) -> StyleOptions:
    """The engine options of a request: its own values, else the model's, else the
    engine's; bounds that depend on the settings are checked here, once for every front."""
    s = settings
    steps = params.steps or s.default_steps
    size = params.size or s.default_size
    if steps > s.max_steps:
        raise InvalidField("steps", f"must be between 1 and {s.max_steps}")
    if size > s.max_size:
        raise InvalidField("size", f"must be between 16 and {s.max_size}")
    if styles > s.max_style_images:
        raise InvalidField("style", f"at most {s.max_style_images} style images")
    if params.style_blend is not None and len(params.style_blend) != styles:
        raise InvalidField("style_blend",
                           f"{len(params.style_blend)} weights for {styles} styles")
    if params.preview_every > steps:
        raise InvalidField("preview_every", "must not exceed steps")
    d = manifest.defaults
    base = StyleOptions()

    def weight(given: float | None, name: str, engine_default: float) -> float:
        return float(given if given is not None else d.get(name, engine_default))

    return replace(
        base,
        steps=steps,
        size=size,
        content_weight=weight(params.content_weight, "content_weight",
                              base.content_weight),
        style_weight=weight(params.style_weight, "style_weight", base.style_weight),
        tv_weight=weight(params.tv_weight, "tv_weight", base.tv_weight),
        adam_lr=float(d.get("adam_lr", base.adam_lr)),
        content_layer=str(d.get("content_layer", base.content_layer)),
        style_layers=tuple(d.get("style_layers", base.style_layers)),
        optimizer=params.optimizer,
        init=params.init,
        style_scale=params.style_scale,
        style_blend=tuple(params.style_blend) if params.style_blend else None,
        preserve_color=params.preserve_color,
        seed=params.seed if params.seed is not None else 0,
        progress_every=s.progress_every,
        preview_every=params.preview_every,
        precision=s.style_precision,
        channels_last=s.style_channels_last,
    )


class StylizeService:
    def __init__(
        self, catalog: Catalog, pool: WorkerPool, encoder: Encoder, store: JobStore,
        settings: Settings,
    ) -> None:
        self.catalog = catalog
        self.pool = pool
        self.encoder = encoder
        self.store = store
        self.settings = settings
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}
        # asyncio keeps only weak references to tasks: hold the finishing ones here.
        self._finishing: set[asyncio.Task[None]] = set()

    def resolve(self) -> Manifest:
        return require_model(self.catalog, self.settings.style_model, "vgg")

    def options_for(self, params: StyleParams, styles: int, manifest: Manifest) -> StyleOptions:
        return engine_options(params, styles, manifest, self.settings)

    async def submit(self, content: bytes, styles: list[bytes], params: StyleParams) -> Job:
        manifest = self.resolve()
        options = self.options_for(params, len(styles), manifest)
        decoded = await self.encoder.run(self._decode_all, content, styles)
        echo = {**params.echo(), **{k: getattr(options, k) for k in (
            "steps", "size", "content_weight", "style_weight", "tv_weight", "seed")},
            "model": manifest.name}
        job = self.store.create(options.steps, echo)
        loop = asyncio.get_running_loop()
        work = StylizeWork(
            model=manifest.name, content=decoded[0], styles=decoded[1:], options=options,
            request_id=job.id, cancel=job.cancel,
            on_start=lambda: loop.call_soon_threadsafe(self.store.start, job),
            on_progress=lambda p: self._progress_from_worker(loop, job, p),
        )
        try:
            future = self.pool.submit(work)
        except AtelierError:
            self.store.discard(job)
            raise
        self._futures[job.id] = future
        fmt = ImageFormat(params.format)
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._schedule_finish, job, f, fmt))
        return job

    def _decode_all(self, content: bytes, styles: list[bytes]) -> list[Any]:
        images = []
        named = [("content", content)] + [
            (f"style[{i}]" if len(styles) > 1 else "style", s) for i, s in enumerate(styles)]
        for name, data in named:
            try:
                images.append(decode_upload(data, self.settings.max_pixels))
            except ImageInputError as exc:
                exc.field = name
                raise
        return images

    def _progress_from_worker(
        self, loop: asyncio.AbstractEventLoop, job: Job, progress: Progress
    ) -> None:
        # Runs on the worker thread: encode the small preview here, off the event loop.
        preview = None
        if progress.preview is not None:
            jpeg = imaging.encode(progress.preview, ImageFormat.JPEG)
            preview = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
        loop.call_soon_threadsafe(
            self.store.advance, job, progress.step, _losses(progress.losses), preview)

    def _schedule_finish(
        self, job: Job, future: concurrent.futures.Future[Any], fmt: ImageFormat
    ) -> None:
        task = asyncio.ensure_future(self._finish(job, future, fmt))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish(
        self, job: Job, future: concurrent.futures.Future[Any], fmt: ImageFormat
    ) -> None:
        self._futures.pop(job.id, None)
        if future.cancelled():
            self.store.cancelled(job)
            return
        exc = future.exception()
        if isinstance(exc, Cancelled) or (exc is None and job.cancel.is_set()):
            self.store.cancelled(job)
            return
        if exc is not None:
            self.store.fail(job, _job_error(exc))
            return
        result: StyleResult = future.result()
        try:
            data = await self.encoder.run(imaging.encode, result.image, fmt)
            path = self.store.result_path(job, fmt.value)
            await self.encoder.run(path.write_bytes, data)
        except Exception as write_error:
            log.exception("could not store the result of job %s", job.id)
            self.store.fail(job, _job_error(write_error))
            return
        self.store.succeed(job, path=path, media_type=fmt.media_type, step=result.steps,
                           losses=_losses(result.losses), seconds=round(result.seconds, 3))

    def cancel(self, job: Job) -> None:
        """Queued: dropped at once. Running: stops within one step and frees its memory."""
        if job.status.terminal:
            return
        job.cancel.set()
        future = self._futures.get(job.id)
        if future is not None and future.cancel():
            self.store.cancelled(job)

    def result(self, job: Job) -> tuple[Any, str]:
        """(path, media type) of a succeeded job; JobFailed or JobNotFinished otherwise."""
        if job.status is JobStatus.SUCCEEDED and job.result_path is not None:
            return job.result_path, job.media_type or "application/octet-stream"
        if job.status is JobStatus.FAILED and job.error is not None:
            raise JobFailed(job)
        raise JobNotFinished(job)
