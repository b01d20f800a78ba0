"""Continuous batching of style jobs through the real pool and runtime (real VGG, tiny
images): jobs join a running batch at a step boundary, leave when done, and batches of
different shape buckets share the worker fairly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.catalog import Catalog
from app.engines import style
from app.pool import WorkerPool
from app.runtime import STYLIZE_LANE, StylizeWork, build_pool
from tests.conftest import make_settings

DATA = Path(__file__).parent / "data"
OPTIONS = style.StyleOptions(size=48, steps=10, progress_every=1, bucket_px=16)


def image(name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(DATA / name).convert("RGB")))


@pytest.fixture
def pool(real_catalog: Catalog) -> Iterator[WorkerPool]:
    settings = make_settings(style_batch_size=4, torch_threads=2)
    built = build_pool(settings, real_catalog, lanes=(STYLIZE_LANE,))
    built.start()
    yield built
    built.shutdown(5)


class Recorder:
    """Progress of several jobs in arrival order: (job, step, time)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, float]] = []
        self.first: dict[str, threading.Event] = {}

    def work(self, name: str, content: torch.Tensor, options: style.StyleOptions
             ) -> StylizeWork:
        self.first[name] = threading.Event()

        def on_progress(p: style.Progress) -> None:
            self.events.append((name, p.step, time.monotonic()))
            self.first[name].set()

        return StylizeWork(model="vgg19-caffe", content=content, styles=[image("starry.jpg")],
                           options=options, on_progress=on_progress)


def test_a_job_joins_the_running_batch_and_leaves_when_its_steps_are_done(
        pool: WorkerPool) -> None:
    recorder = Recorder()
    content = image("content.jpg")  # 4:3
    long_job = recorder.work("long", content, replace(OPTIONS, steps=40))
    long_future = pool.submit(long_job)
    assert recorder.first["long"].wait(60)
    # A slightly different aspect ratio: the same 16 px bucket, so the same batch.
    narrower = content[:, 4:]
    assert long_job.batch_key == recorder.work("probe", narrower, OPTIONS).batch_key
    short_job = recorder.work("short", narrower, replace(OPTIONS, steps=4, seed=1))
    short = pool.submit(short_job).result(timeout=60)
    assert not long_future.done(), "the short job did not wait for the long one to finish"
    assert isinstance(short, style.StyleResult) and short.steps == 4
    assert short.image.shape[:2] == style.output_shape(narrower.shape, OPTIONS.size)
    long = long_future.result(timeout=120)
    assert isinstance(long, style.StyleResult) and long.steps == 40
    # The short job's steps ran inside the long job's: they shared forward passes.
    long_steps = [t for name, _, t in recorder.events if name == "long"]
    short_steps = [t for name, _, t in recorder.events if name == "short"]
    assert long_steps[0] < short_steps[0] and short_steps[-1] < long_steps[-1]
    rows = pool.metrics.batch_images.labels("StylizeWork")
    assert max(b for b, _ in _observed(rows)) >= 2


def test_batches_of_different_buckets_take_turns(pool: WorkerPool) -> None:
    recorder = Recorder()
    photo = image("content.jpg")
    wide = photo[: photo.shape[0] // 2]  # 18x48 at size 48: the 32x48 bucket
    tall = photo.transpose(0, 1).contiguous()  # 48x36: the 48x48 bucket
    a = recorder.work("wide", wide, replace(OPTIONS, steps=12))
    b = recorder.work("tall", tall, replace(OPTIONS, steps=12))
    assert a.batch_key != b.batch_key
    futures = [pool.submit(a), pool.submit(b)]
    for future in futures:
        assert isinstance(future.result(timeout=120), style.StyleResult)
    order = [name for name, _, _ in recorder.events]
    # Round robin: neither bucket runs all its steps before the other starts, and the two
    # never drift more than one step apart.
    assert order.index("tall") < order.index("wide") + 2
    done = {"wide": 0, "tall": 0}
    for name in order:
        done[name] += 1
        assert abs(done["wide"] - done["tall"]) <= 1, order


def test_compute_shapes_of_many_aspect_ratios_stay_within_the_buckets() -> None:
    photo = image("content.jpg")
    keys = set()
    for crop in range(0, photo.shape[1] - 20, 3):  # 4:3 down to narrow portraits
        content = photo[:, crop:]
        if style.fits(content.shape, OPTIONS.size):
            keys.add(style.batch_key(OPTIONS, content.shape)[0])
    natural = {style.output_shape(photo[:, c:].shape, OPTIONS.size)
               for c in range(0, photo.shape[1] - 20, 3)}
    assert len(natural) > 10  # many natural shapes...
    assert len(keys) <= 2 * OPTIONS.size // OPTIONS.bucket_px  # ...few compute shapes


def _observed(histogram: object) -> list[tuple[float, float]]:
    """(upper bound, count) of each non-empty bucket of a prometheus histogram child."""
    buckets = histogram._upper_bounds, histogram._buckets  # type: ignore[attr-defined]
    return [(bound, b.get()) for bound, b in zip(*buckets, strict=True) if b.get()]


def test_out_of_memory_in_one_bucket_fails_only_its_jobs(
        pool: WorkerPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that runs out of device memory ends the jobs of that batch (503, retry) and
    no other: the other bucket's job and the worker go on."""
    from app.pool import OutOfMemory

    recorder = Recorder()
    photo = image("content.jpg")
    doomed = recorder.work("doomed", photo[: photo.shape[0] // 2], replace(OPTIONS, steps=8))
    fine = recorder.work("fine", photo.transpose(0, 1).contiguous(),
                         replace(OPTIONS, steps=8))
    doomed_shape = style.batch_key(doomed.options, doomed.content.shape)[0]
    real_step = style.StyleBatch.step

    def step(self: style.StyleBatch) -> list[tuple[style.StyleJob, object]]:
        if self.key[0] == doomed_shape and self.rows[0].step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self)

    monkeypatch.setattr(style.StyleBatch, "step", step)
    futures = {name: pool.submit(work) for name, work in (("doomed", doomed), ("fine", fine))}
    with pytest.raises(OutOfMemory):
        futures["doomed"].result(timeout=60)
    result = futures["fine"].result(timeout=60)
    assert isinstance(result, style.StyleResult) and result.steps == 8
    again = pool.submit(recorder.work("again", photo, replace(OPTIONS, steps=2)))
    assert isinstance(again.result(timeout=60), style.StyleResult)
    assert pool.healthy
