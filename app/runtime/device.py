"""The executor the service runs: model replicas on one device, dispatching work to engines."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from app.catalog import Catalog, ModelStatus
from app.engines import gan, style
from app.nets.loading import load_gan, load_vgg
from app.nets.vgg import VGG19Features
from app.pool import OutOfMemory, WorkItem
from app.runtime.work import GenerateWork, StylizeWork

log = logging.getLogger("atelier.runtime")


class DeviceRuntime:
    def __init__(self, device: str, catalog: Catalog, *, torch_threads: int = 0,
                 warmup: style.StyleOptions | None = None, warmup_batch: int = 1,
                 kinds: frozenset[str] | None = None, style_cuda_graphs: bool = True) -> None:
        """`kinds`: the model kinds loaded at start-up (those of the pool's lanes; None:
        all). Others still load on first use. `style_cuda_graphs`: style batches replay
        their step from a CUDA graph while their membership holds (CUDA only)."""
        self.device = torch.device(device)
        self.catalog = catalog
        self.torch_threads = torch_threads
        self.generators: dict[str, nn.Module] = {}
        self.vggs: dict[str, VGG19Features] = {}
        self.spaces: dict[str, style.InputSpace] = {}
        self.gram_cache = style.GramCache()
        self._lock = threading.Lock()
        self._loaded = False
        # Continuous style batches belong to the worker thread that steps them.
        self._loops = threading.local()
        self.warmup, self.warmup_batch = warmup, warmup_batch
        self.kinds = kinds
        self.style_cuda_graphs = style_cuda_graphs

    def load(self) -> None:
        if self.device.type == "cpu" and self.torch_threads:
            # One intra-op thread per CPU worker: the HTTP stack needs the other cores, and
            # oneDNN only partitions work identically for every batch size when single-threaded,
            # which keeps a seed's image bitwise the same alone or in any batch.
            torch.set_num_threads(self.torch_threads)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        with self._lock:
            if self._loaded:
                return
            for entry in self.catalog.entries():
                if entry.status is ModelStatus.AVAILABLE and (
                        self.kinds is None or entry.manifest.kind in self.kinds):
                    self._load_model(entry.name)
            if self.warmup is not None:
                self._warm_up(self.warmup)
            self._loaded = True

    def _warm_up(self, options: style.StyleOptions) -> None:
        """Run every bucket shape of `options.size` at every batch size up to
        `warmup_batch` once, so that no job pays a shape's first-run costs (cuDNN's kernel
        selection per (batch, H, W), allocator growth, lazily loaded kernels)."""
        models = [name for name, vgg in self.vggs.items()]
        if not models or options.bucket_px <= 0:
            return
        started = time.perf_counter()
        vgg, space = self.vggs[models[0]], self.spaces[models[0]]
        grey = torch.full((options.size, options.size, 3), 128, dtype=torch.uint8)
        sides = range(options.bucket_px, options.size + 1, options.bucket_px)
        shapes = {(options.size, s) for s in sides} | {(s, options.size) for s in sides}
        for h, w in sorted(shapes):
            content = grey[:h, :w]
            steps = self.warmup_batch + 2
            job_options = replace(options, steps=steps, progress_every=steps, preview_every=0)
            batch = style.StyleBatch(vgg, style.batch_key(job_options, content.shape),
                                     job_options, device=self.device, space=space,
                                     cuda_graphs=self.style_cuda_graphs)
            for _ in range(self.warmup_batch):  # one more row per step: every batch size
                batch.join(style.StyleJob(content, [grey], job_options))
                batch.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        log.info("warmed up %d style shapes x %d batch sizes on %s in %.1f s", len(shapes),
                 self.warmup_batch, self.device, time.perf_counter() - started)

    def _load_model(self, name: str) -> None:
        entry = self.catalog.entry(name)
        if entry is None or entry.status is not ModelStatus.AVAILABLE:
            raise LookupError(f"model {name!r} is not available")
        if entry.manifest.kind == "gan":
            self.generators[name] = load_gan(
                entry.manifest.architecture, entry.weights, str(self.device)
            )
        elif entry.manifest.kind == "vgg":
            self.spaces[name] = style.input_space(entry.manifest.architecture)
            self.vggs[name] = load_vgg(entry.manifest.architecture, entry.weights,
                                       str(self.device))
        log.info("loaded %s on %s", name, self.device)

    def forget(self, names: Sequence[str]) -> None:
        """Drop these models; the next work that names one loads it from disk again. Work
        already running keeps the copy it holds (a running style batch finishes with it)."""
        if not names:
            return
        with self._lock:
            for name in names:
                self.generators.pop(name, None)
                if self.vggs.pop(name, None) is not None:
                    self.spaces.pop(name, None)
                    self.gram_cache.clear()  # Gram targets of the old weights
        log.info("forgot %s on %s", ", ".join(names), self.device)

    def _model(self, models: dict[str, Any], name: str) -> Any:
        if name not in models:  # pulled after start-up: load it from disk now, once
            with self._lock:
                if name not in models:
                    self._load_model(name)
        return models[name]

    def run(self, batch: Sequence[WorkItem], max_images: int) -> list[Any]:
        first = batch[0]
        if isinstance(first, GenerateWork):
            return self._generate([w for w in batch if isinstance(w, GenerateWork)], max_images)
        if isinstance(first, StylizeWork):
            return self._stylize([w for w in batch if isinstance(w, StylizeWork)])
        raise TypeError(f"no engine for {type(first).__name__}")

    def _generate(self, batch: list[GenerateWork], max_images: int) -> list[torch.Tensor]:
        generator = self._model(self.generators, batch[0].model)
        latents = torch.cat([w.latents for w in batch])
        images = gan.sample(generator, latents, self.device, max_images)
        sizes: list[int] = [w.size for w in batch]
        return list(torch.split(images, sizes))

    def _stylize(self, batch: list[StylizeWork]) -> list[style.StyleResult | Exception]:
        """A fixed batch run to the end (lanes without continuous batching)."""
        vgg = self._model(self.vggs, batch[0].model)
        for work in batch:
            if work.on_start is not None:
                work.on_start()
        jobs = [style.StyleJob(w.content, w.styles, w.options, w.on_progress, w.cancel.is_set)
                for w in batch]
        try:
            return style.stylize_batch(vgg, jobs, device=self.device,
                                       space=self.spaces[batch[0].model],
                                       gram_cache=self.gram_cache,
                                       cuda_graphs=self.style_cuda_graphs)
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # finished or cancelled jobs give their memory back

    # ---- continuous batching of style jobs ------------------------------------------

    def active(self) -> int:
        """Style jobs the calling worker is running (continuous lanes)."""
        return sum(len(b) for b in self._loop().batches.values())

    def advance(self, new: Sequence[WorkItem]) -> list[tuple[WorkItem, Any]]:
        """Let `new` jobs join the running batch of their batch key, then take one step of
        every running batch in turn (each bucket advances once per round, so none starves).
        Returns the jobs that left, with their result or the exception that ended them."""
        loop = self._loop()
        left: list[tuple[WorkItem, Any]] = []
        for work in new:
            if not isinstance(work, StylizeWork):
                left.append((work, TypeError(f"no continuous engine for {type(work).__name__}")))
                continue
            try:
                self._join(loop, work)
            except Exception as exc:
                left.append((work, exc))
        for key, batch in list(loop.batches.items()):
            try:
                outcomes: list[tuple[style.StyleJob, Any]] = list(batch.step())
            except Exception as exc:
                # The whole batch shares the failure (OOM, a bug): only its jobs end.
                log.exception("style batch %s failed on %s", key, self.device)
                error: Exception = OutOfMemory(str(self.device)) if isinstance(
                    exc, torch.OutOfMemoryError) else exc
                exc.__traceback__ = None  # logged; its frames would pin the batch's tensors
                outcomes = [(row.job, error) for row in batch.rows]
                batch.rows.clear()
            for job, outcome in outcomes:
                left.append((loop.members.pop(id(job)), outcome))
            if not len(batch):
                del loop.batches[key]
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # finished jobs give their memory back
        return left

    def abandon(self) -> list[WorkItem]:
        """Stop the calling worker's running jobs (the pool is stopping); returns them."""
        loop = self._loop()
        items: list[WorkItem] = list(loop.members.values())
        loop.batches.clear()
        loop.members.clear()
        return items

    def _join(self, loop: _StyleLoop, work: StylizeWork) -> None:
        vgg = self._model(self.vggs, work.model)
        if work.on_start is not None:
            work.on_start()
        job = style.StyleJob(work.content, work.styles, work.options, work.on_progress,
                             work.cancel.is_set)
        key = work.batch_key
        batch = loop.batches.get(key)
        if batch is None:
            batch = style.StyleBatch(vgg, style.batch_key(work.options, work.content.shape),
                                     work.options, device=self.device,
                                     space=self.spaces[work.model], gram_cache=self.gram_cache,
                                     cuda_graphs=self.style_cuda_graphs)
        batch.join(job)  # raises for a job that cannot run: nothing is kept then
        loop.batches[key] = batch
        loop.members[id(job)] = work

    def _loop(self) -> _StyleLoop:
        loop: _StyleLoop | None = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = _StyleLoop()
        return loop


class _StyleLoop:
    """One worker's running style batches, by batch key, and the work item of each job."""

    def __init__(self) -> None:
        self.batches: dict[Hashable, style.StyleBatch] = {}
        self.members: dict[int, StylizeWork] = {}
