"""The executor the service runs: model replicas on one device, dispatching work to engines."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from app.catalog import Catalog, ModelStatus
from app.engines import gan, style
from app.nets.loading import load_gan, load_vgg
from app.nets.vgg import VGG19Features
from app.pool import WorkItem
from app.runtime.work import GenerateWork, StylizeWork

log = logging.getLogger("atelier.runtime")


class DeviceRuntime:
    def __init__(self, device: str, catalog: Catalog, *, torch_threads: int = 0) -> None:
        self.device = torch.device(device)
        self.catalog = catalog
        self.torch_threads = torch_threads
        self.generators: dict[str, nn.Module] = {}
        self.vggs: dict[str, VGG19Features] = {}
        self.spaces: dict[str, style.InputSpace] = {}
        self.gram_cache = style.GramCache()
        self._lock = threading.Lock()
        self._loaded = False

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
                if entry.status is ModelStatus.AVAILABLE:
                    self._load_model(entry.name)
            self._loaded = True

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
        vgg = self._model(self.vggs, batch[0].model)
        for work in batch:
            if work.on_start is not None:
                work.on_start()
        jobs = [style.StyleJob(w.content, w.styles, w.options, w.on_progress, w.cancel.is_set)
                for w in batch]
        try:
            return style.stylize_batch(vgg, jobs, device=self.device,
                                       space=self.spaces[batch[0].model],
                                       gram_cache=self.gram_cache)
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()  # finished or cancelled jobs give their memory back
