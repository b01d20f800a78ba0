"""The executor the service runs: model replicas on one device, dispatching work to engines."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from app.catalog import Catalog, ModelStatus
from app.engines import gan
from app.nets.loading import load_gan
from app.pool.work import GenerateWork, WorkItem

log = logging.getLogger("atelier.runtime")


class DeviceRuntime:
    def __init__(self, device: str, catalog: Catalog, *, torch_threads: int = 0) -> None:
        self.device = torch.device(device)
        self.catalog = catalog
        self.torch_threads = torch_threads
        self.generators: dict[str, nn.Module] = {}

    def load(self) -> None:
        if self.device.type == "cpu" and self.torch_threads:
            # One intra-op thread per CPU worker: the HTTP stack needs the other cores, and
            # oneDNN only partitions work identically for every batch size when single-threaded,
            # which keeps a seed's image bitwise the same alone or in any batch.
            torch.set_num_threads(self.torch_threads)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        for entry in self.catalog.entries():
            if entry.status is ModelStatus.AVAILABLE and entry.manifest.kind == "gan":
                self.generators[entry.name] = load_gan(
                    entry.manifest.architecture, entry.weights, str(self.device)
                )
                log.info("loaded %s on %s", entry.name, self.device)

    def run(self, batch: Sequence[WorkItem], max_images: int) -> list[Any]:
        first = batch[0]
        if isinstance(first, GenerateWork):
            return self._generate([w for w in batch if isinstance(w, GenerateWork)], max_images)
        raise TypeError(f"no engine for {type(first).__name__}")

    def _generate(self, batch: list[GenerateWork], max_images: int) -> list[torch.Tensor]:
        generator = self.generators.get(batch[0].model)
        if generator is None:
            raise LookupError(f"model {batch[0].model!r} is not loaded on {self.device}")
        latents = torch.cat([w.latents for w in batch])
        images = gan.sample(generator, latents, self.device, max_images)
        return list(images.split([w.size for w in batch]))
