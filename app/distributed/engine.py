"""An engine replica: one Serve deployment replica that runs one or more lanes of work on
its device with the local pool (its scheduler batches whatever reaches this replica)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import ray
import torch

from app.catalog import Catalog
from app.distributed.wire import Problem, stats_dict
from app.engines.style import StyleOptions
from app.pool import WorkerPool
from app.process import tune_garbage_collector
from app.runtime import STYLIZE_LANE, GenerateWork, StylizeWork, build_pool
from app.services.warmup import style_warmup
from app.settings import Settings

log = logging.getLogger("atelier.engine")

# What `EngineReplica.stylize` yields: ("start", None), ("progress", Progress),
# then one of ("result", StyleResult) or ("error", Problem).
StyleEvent = tuple[str, Any]


class EngineReplica:
    def __init__(self, settings: dict[str, Any], lanes: list[str]) -> None:
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs this replica reserved: "cuda" is ours.
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.settings = Settings(**{**settings, "devices": device})
        node = ray.get_runtime_context().get_node_id()[:12]
        self.where = f"{device} on node {node}"
        catalog = Catalog(self.settings.catalog_dir, self.settings.model_dir)
        self.pool: WorkerPool = build_pool(
            self.settings, catalog, lanes=lanes,
            style_warmup=style_warmup(self.settings, catalog) if STYLIZE_LANE in lanes else None)
        self.pool.start()
        tune_garbage_collector()  # the models are loaded: freeze them out of the GC's walks
        log.info("engine replica ready", extra={"fields": {"lanes": lanes, "where": self.where}})

    async def generate(self, model: str, latents: torch.Tensor,
                       request_id: str) -> tuple[str, Any, dict[str, Any]]:
        """("ok", uint8 images [n, H, W, C], stats) or ("error", Problem, {})."""
        work = GenerateWork(model=model, latents=latents, request_id=request_id)
        try:
            images = await self.pool.run(work)
        except Exception as exc:
            return "error", Problem.of(exc, "generating"), {}
        work.stats.device = self.where
        return "ok", images, stats_dict(work.stats)

    async def stylize(self, model: str, content: torch.Tensor, styles: list[torch.Tensor],
                      options: StyleOptions, request_id: str) -> AsyncIterator[StyleEvent]:
        """A style job's events as it runs. Cancelling the stream (the ingress's client left
        or asked to cancel) stops the job within one step."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StyleEvent] = asyncio.Queue()
        work = StylizeWork(
            model=model, content=content, styles=styles, options=options,
            request_id=request_id,
            on_start=lambda: _call(loop, events.put_nowait, ("start", None)),
            on_progress=lambda p: _call(loop, events.put_nowait, ("progress", p)),
        )
        try:
            done = asyncio.wrap_future(self.pool.submit(work))
        except Exception as exc:
            yield "error", Problem.of(exc, "queueing a style job")
            return
        try:
            while not done.done() or not events.empty():
                next_event = asyncio.ensure_future(events.get())
                await asyncio.wait({next_event, done}, return_when=asyncio.FIRST_COMPLETED)
                if next_event.done():
                    yield next_event.result()
                else:
                    next_event.cancel()
            try:
                yield "result", done.result()
            except Exception as exc:
                yield "error", Problem.of(exc, "running a style job")
        finally:
            if not done.done():  # the ingress went away: stop the job at its next step
                work.cancel.set()
                work.future.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(asyncio.shield(done), 10)

    def check_health(self) -> None:
        """Serve restarts a replica whose check fails (a worker that cannot come back)."""
        if not self.pool.healthy:
            raise RuntimeError(f"engine replica on {self.where} has dead workers")

    def __del__(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.shutdown(self.settings.shutdown_grace_s)


def _call(loop: asyncio.AbstractEventLoop, put: Callable[[StyleEvent], None],
          event: StyleEvent) -> None:
    """From a worker thread: hand `event` to the replica's event loop."""
    loop.call_soon_threadsafe(put, event)
