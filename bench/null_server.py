"""The real service with a generator that costs nothing: what the HTTP stack, the pool and
the encoder cost per request.

`app.main.create_app` served exactly as `atelier serve` serves it (`app.serving`: the same
uvicorn set-up, middleware, routes, pool, scheduler, encoder, settings from `ATELIER_*`),
except that the executor answers every /generate item with zero uint8 images of the model's
shape [n, H, W, C] instead of running the network.

    ATELIER_PORT=8001 python bench/null_server.py
    ATELIER_NULL_IMAGE=noise ...    # a fixed noise image instead (PNG encode as costly as a face's)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.catalog import Catalog
from app.pool import Executor, WorkItem
from app.settings import Settings


class NullExecutor:
    """Answers each generate item with images of `shapes[model]`; any other work is refused.

    Items are recognised by their fields (`model`, `latents`), not their class, so that this
    script does not depend on which module defines the concrete work kinds.
    """

    def __init__(self, shapes: dict[str, tuple[int, int, int]], image: str = "zeros") -> None:
        self.shapes = shapes
        self.noise = image == "noise"
        self._frames: dict[str, torch.Tensor] = {}

    def load(self) -> None:
        for model, (h, w, c) in self.shapes.items():
            if self.noise:
                frame = torch.randint(0, 256, (h, w, c), dtype=torch.uint8,
                                      generator=torch.Generator().manual_seed(0))
            else:
                frame = torch.zeros((h, w, c), dtype=torch.uint8)
            self._frames[model] = frame

    def run(self, batch: Sequence[WorkItem], max_images: int) -> list[Any]:
        results: list[Any] = []
        for item in batch:
            model = getattr(item, "model", None)
            if getattr(item, "latents", None) is None or model not in self._frames:
                results.append(TypeError(f"the null executor runs no {type(item).__name__}"))
                continue
            frame = self._frames[model]
            results.append(frame.expand(item.size, *frame.shape))
        return results


def gan_shapes(settings: Settings) -> dict[str, tuple[int, int, int]]:
    """[H, W, C] of every GAN in the catalog (64x64x3 where the manifest does not say)."""
    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    shapes: dict[str, tuple[int, int, int]] = {}
    for name, manifest in catalog.manifests.items():
        if manifest.kind == "gan":
            h, w = manifest.output_size or (64, 64)
            shapes[name] = (h, w, int(manifest.architecture.get("nc", 3)))
    return shapes


def null_factory(settings: Settings, image: str = "zeros") -> Any:
    shapes = gan_shapes(settings)

    def factory(_device: str) -> Executor:
        return NullExecutor(shapes, image)

    return factory


def main() -> None:
    from app.main import create_app
    from app.serving import server_for

    settings = Settings()
    if len(sys.argv) > 1:
        settings = settings.model_copy(update={"port": int(sys.argv[1])})
    image = os.environ.get("ATELIER_NULL_IMAGE", "zeros")
    # What `atelier serve` runs (app.serving.serve), with the executor swapped.
    app = create_app(settings, executor_factory=null_factory(settings, image))
    server_for(app, settings).run()


if __name__ == "__main__":
    main()
