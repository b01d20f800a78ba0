"""Style-transfer use cases: uploads in, a job out; progress, previews and results."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
from dataclasses import replace
from typing import Any

import torch

from app.catalog import Catalog, Manifest
from app.engines import imaging
from app.engines.decoding import ImageInputError, decode_upload
from app.engines.imaging import ImageFormat
from app.engines.style import (
    MIN_SIDE,
    Cancelled,
    Progress,
    StyleOptions,
    StyleResult,
    fits,
    resize_long_side,
)
from app.errors import AtelierError, InvalidField, as_atelier_error
from app.pool import Pool
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

    def __init__(self, cause: FloatingPointError, optimizer: str | None) -> None:
        # Adam's steps are as large as its learning rate whatever the loss's scale, and
        # bf16 (Adam only) overflows sooner; L-BFGS diverges only on extreme weights.
        hint = ("lower style_weight, or use optimizer=lbfgs" if optimizer == "adam"
                else "lower style_weight (or content_weight, tv_weight)")
        super().__init__(f"{cause}; {hint}")


def _job_error(exc: BaseException, job: Job) -> AtelierError:
    if isinstance(exc, FloatingPointError):
        return Diverged(exc, job.params.get("optimizer"))
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
    if round(size * params.style_scale) < MIN_SIDE:
        raise InvalidField("style_scale", f"too small for size {size}: the style images would"
                           f" be under {MIN_SIDE} px (at least {MIN_SIDE / size:.3g})")
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
        # bf16 gradients are too noisy for L-BFGS's curvature pairs (see StyleBatch).
        precision=s.style_precision if params.optimizer == "adam" else "fp32",
        channels_last=s.style_channels_last,
        bucket_px=s.style_buckets(),
    )


class Interrupted(AtelierError):
    status = 503
    slug = "interrupted"
    title = "Interrupted"
    retry_after_s = 5

    def __init__(self, job: Job, requeued: bool) -> None:
        super().__init__(
            f"the server stopped before job {job.id} finished; "
            + ("it runs again when the server is back: follow /jobs/" + job.id if requeued
               else "it was not re-queued (ATELIER_INTERRUPTED_JOBS=fail)"))
        self.job_id = job.id

    def headers(self) -> dict[str, str]:
        return {"X-Job-Id": self.job_id, "Location": f"/jobs/{self.job_id}"}


class StylizeService:
    def __init__(
        self, catalog: Catalog, pool: Pool, encoder: Encoder, store: JobStore,
        settings: Settings, *, decoder: Encoder | None = None,
    ) -> None:
        self.catalog = catalog
        self.pool = pool
        self.encoder = encoder
        # Uploads decode in a pool of their own: a burst of them never delays the encoding
        # of /generate's answers.
        self.decoder = decoder or encoder
        self.store = store
        # Another process asks, through a shared store, to cancel a job this one runs.
        store.on_cancel_request(self.cancel)
        self.settings = settings
        self._futures: dict[str, concurrent.futures.Future[Any]] = {}
        # asyncio keeps only weak references to tasks: hold the running ones here.
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._closing = False  # drain() has begun: no job is taken on any more

    def resolve(self) -> Manifest:
        return require_model(self.catalog, self.settings.style_model, "vgg")

    def options_for(self, params: StyleParams, styles: int, manifest: Manifest) -> StyleOptions:
        return engine_options(params, styles, manifest, self.settings)

    async def submit(self, content: bytes, styles: list[bytes], params: StyleParams,
                     owner: str | None = None) -> Job:
        """Check, admit, decode and queue a job. Admission comes first: a request that would
        be refused costs no decoding."""
        manifest = self.resolve()
        options = self.options_for(params, len(styles), manifest)
        echo = {**params.echo(), **{k: getattr(options, k) for k in (
            "steps", "size", "content_weight", "style_weight", "tv_weight", "seed")},
            "model": manifest.name}
        job = self.store.create(options.steps, echo, params=params.echo(), owner=owner)
        try:
            decoded = await self.decoder.run(self._prepare_inputs, job, content, styles,
                                             options, True)
            self._queue(job, manifest, options, decoded, params.format)
        except BaseException:
            self.store.discard(job)
            raise
        return job

    def _prepare_inputs(self, job: Job, content: bytes, styles: list[bytes],
                        options: StyleOptions, keep: bool) -> list[torch.Tensor]:
        """Decode (on a decode thread) and, for a restart, keep the uploads."""
        images = self._decode_all(content, styles, options)
        if keep:
            self.store.save_inputs(job, content, styles)
        return images

    def _queue(self, job: Job, manifest: Manifest, options: StyleOptions,
               decoded: list[torch.Tensor], fmt: str) -> None:
        loop = asyncio.get_running_loop()
        work = StylizeWork(
            model=manifest.name, content=decoded[0], styles=decoded[1:], options=options,
            request_id=job.id, cancel=job.cancel,
            on_start=lambda: loop.call_soon_threadsafe(self.store.start, job),
            on_progress=lambda p: self._progress_from_worker(loop, job, p),
        )
        future = self.pool.submit(work)
        self._futures[job.id] = future
        image_format = ImageFormat(fmt)
        future.add_done_callback(
            lambda f: loop.call_soon_threadsafe(self._schedule_finish, job, f, image_format))

    def _decode_all(self, content: bytes, styles: list[bytes],
                    options: StyleOptions) -> list[torch.Tensor]:
        style_side = round(options.size * options.style_scale)
        named = [("content", content, options.size)] + [
            (f"style[{i}]" if len(styles) > 1 else "style", data, style_side)
            for i, data in enumerate(styles)]
        images = []
        for name, data, long_side in named:
            try:
                image = decode_upload(data, self.settings.max_pixels, long_side)
            except ImageInputError as exc:
                exc.field = name
                raise
            if not fits(image.shape, long_side):
                h, w = image.shape[:2]
                raise InvalidField(
                    name, f"a {w}x{h} image is too elongated for a long side of {long_side}"
                    f" px: its short side would be under {MIN_SIDE} px (at most"
                    f" {long_side // MIN_SIDE}:1 at this size)")
            # Queued jobs hold their images at the size they will run at, nothing larger.
            images.append(resize_long_side(image, long_side, MIN_SIDE))
        return images

    async def resume_unfinished(self) -> int:
        """At start-up: run again, or fail, the jobs the previous process left unfinished
        (ATELIER_INTERRUPTED_JOBS), or with a shared store any process that stopped or died
        left. Returns how many were re-queued."""
        requeued = 0
        for job in self.store.claim_unfinished():
            inputs = self.store.load_inputs(job)
            if self.settings.interrupted_jobs == "fail" or inputs is None:
                self.store.fail(job, Interrupted(job, requeued=False))
                continue
            try:
                params = StyleParams.model_validate(job.params)
                manifest = self.resolve()
                options = self.options_for(params, len(inputs[1]), manifest)
                decoded = await self.decoder.run(self._prepare_inputs, job, inputs[0],
                                                 inputs[1], options, False)
                job.status, job.step, job.interrupted = JobStatus.QUEUED, 0, False
                self._queue(job, manifest, options, decoded, params.format)
                requeued += 1
            except AtelierError as exc:
                self.store.fail(job, exc)
        return requeued

    async def adopt_orphans(self) -> int:
        """While serving: run the jobs a stopped or dead process left (with a shared store;
        the embedded one has none at run time). Returns how many were re-queued."""
        if self._closing:
            return 0
        return await self.resume_unfinished()

    async def drain(self, grace_s: float) -> None:
        """Shutdown: running jobs get until `grace_s` to finish; then they (and the queued
        ones) stop within a step and go back to the queue for the next start, and their
        followers get a final `interrupted` event."""
        self._closing = True
        self.pool.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._futures and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._draining = True
        pending = list(self._futures.values())
        for job in self.store.driving():
            job.cancel.set()
        for future in pending:
            future.cancel()  # queued: never starts; running: stops at the next step
        if pending:
            await asyncio.wait([asyncio.wrap_future(f) for f in pending], timeout=10)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self.store.driving():
            self.store.requeue(job)

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
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(
        self, job: Job, future: concurrent.futures.Future[Any], fmt: ImageFormat
    ) -> None:
        self._futures.pop(job.id, None)
        exc = None if future.cancelled() else future.exception()
        stopped = future.cancelled() or isinstance(exc, Cancelled) or (
            exc is None and job.cancel.is_set())
        if stopped and self._draining:
            self.store.requeue(job)  # the server is stopping, not the user
            return
        if stopped:
            self.store.cancelled(job)
            return
        if exc is not None:
            self.store.fail(job, _job_error(exc, job))
            return
        result: StyleResult = future.result()
        try:
            data = await self.encoder.run(imaging.encode, result.image, fmt)
            await self.store.write_result(job, data, fmt.value)
        except Exception as write_error:
            log.exception("could not store the result of job %s", job.id)
            self.store.fail(job, _job_error(write_error, job))
            return
        self.store.succeed(job, media_type=fmt.media_type, step=result.steps,
                           losses=_losses(result.losses), seconds=round(result.seconds, 3))

    def cancel(self, job: Job) -> None:
        """Queued: dropped at once. Running: stops within one step and frees its memory.
        A job another process drives (a shared store) is cancelled by that process."""
        if job.status.terminal:
            return
        if not self.store.drives(job):
            self.store.request_cancel(job)
            return
        job.cancel.set()
        future = self._futures.get(job.id)
        if future is not None and future.cancel():
            self.store.cancelled(job)

    async def result(self, job: Job) -> tuple[bytes, str]:
        """(image, media type) of a succeeded job; JobFailed or JobNotFinished otherwise."""
        if job.status is JobStatus.SUCCEEDED:
            return (await self.store.read_result(job),
                    job.media_type or "application/octet-stream")
        if job.status is JobStatus.FAILED and job.error is not None:
            raise JobFailed(job)
        if job.interrupted:
            raise Interrupted(job, requeued=True)
        raise JobNotFinished(job)
