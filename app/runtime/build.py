"""`build_pool`: the one place where settings become a worker pool (server, CLI, benches)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from app.catalog import Catalog
from app.engines.style import StyleOptions
from app.pool import Executor, Lane, PoolMetrics, WorkerPool
from app.runtime.device import DeviceRuntime
from app.runtime.work import GENERATE_LANE, STYLIZE_LANE
from app.settings import Settings

MODEL_KIND = {GENERATE_LANE: "gan", STYLIZE_LANE: "vgg"}  # the models each lane runs


def lanes_for(settings: Settings, names: Sequence[str]) -> list[Lane]:
    every = {
        GENERATE_LANE: Lane(GENERATE_LANE, settings.workers_per_device, settings.queue_size,
                            settings.max_batch_images, settings.batch_wait_ms),
        # Style jobs run in a lane of their own, so a long job never holds up /generate:
        # the two lanes' workers interleave on the device.
        # Continuous batching: a style job joins the running batch of its shape bucket at
        # the next step and leaves when it is done; no batch window.
        STYLIZE_LANE: Lane(STYLIZE_LANE, settings.stylize_workers_per_device,
                           settings.max_active_jobs, settings.style_batch(), 0.0,
                           continuous=True),
    }
    return [every[name] for name in names]


def build_pool(
    settings: Settings,
    catalog: Catalog,
    *,
    lanes: Sequence[str] = (GENERATE_LANE, STYLIZE_LANE),
    executor_factory: Callable[[str], Executor] | None = None,
    metrics: PoolMetrics | None = None,
    style_warmup: StyleOptions | None = None,
) -> WorkerPool:
    """A pool (not started) with the given lanes on every configured device.

    `executor_factory` replaces the model runtime (tests, benches with a null model).
    `style_warmup`: the options of a default style job, whose bucket shapes every device
    runs once while the pool starts (ATELIER_STYLE_WARMUP).
    """
    # A pool without the style lane (a Ray generate-engine replica) holds no VGG19, and
    # one without the generate lane no GAN.
    kinds = frozenset(MODEL_KIND[lane] for lane in lanes)

    def runtime(device: str) -> Executor:
        return DeviceRuntime(device, catalog, torch_threads=settings.torch_threads,
                             warmup=style_warmup, warmup_batch=settings.style_batch(),
                             kinds=kinds, style_cuda_graphs=settings.style_cuda_graphs)

    return WorkerPool(
        settings.device_list(),
        executor_factory or runtime,
        lanes=lanes_for(settings, lanes),
        retry_after_s=settings.retry_after_s,
        metrics=metrics,
    )
