"""Generation use cases: seeds and latents in, encoded images out."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from app.catalog import Catalog, Manifest
from app.engines import gan, imaging
from app.engines.imaging import ImageFormat
from app.errors import InvalidField
from app.pool import Pool, WorkStats
from app.runtime import GenerateWork
from app.services.encoding import Encoder
from app.services.errors import require_model


@dataclass
class Generated:
    model: str
    seeds: list[int]
    images: torch.Tensor  # uint8 [n, H, W, C]
    stats: WorkStats


class GenerationService:
    def __init__(self, catalog: Catalog, pool: Pool, encoder: Encoder, *,
                 max_images: int) -> None:
        self.catalog = catalog
        self.pool = pool
        self.encoder = encoder
        self.max_images = max_images  # per request

    def resolve(self, name: str) -> Manifest:
        return require_model(self.catalog, name, "gan")

    @staticmethod
    def draw_seed() -> int:
        # A seed picks an image, it protects nothing: no need for `secrets`' system call.
        return random.randrange(gan.MAX_SEED + 1)

    async def _run(
        self, manifest: Manifest, latents: torch.Tensor, request_id: str, timeout_s: float
    ) -> tuple[torch.Tensor, WorkStats]:
        work = GenerateWork(model=manifest.name, latents=latents, request_id=request_id)
        images = await self.pool.run(work, timeout_s)
        return images, work.stats

    async def generate(
        self, *, model: str, n: int, seed: int | None, truncation: float | None,
        request_id: str = "", timeout_s: float,
    ) -> Generated:
        if n > self.max_images:
            raise InvalidField("n", f"must be <= {self.max_images}")
        manifest = self.resolve(model)
        seed = self.draw_seed() if seed is None else seed
        nz = int(manifest.architecture["nz"])
        latents = gan.latents_for_seeds(seed, n, nz, truncation)
        images, stats = await self._run(manifest, latents, request_id, timeout_s)
        return Generated(manifest.name, [seed + i for i in range(n)], images, stats)

    async def interpolate(
        self, *, model: str, seed_from: int, seed_to: int, steps: int,
        truncation: float | None, request_id: str = "", timeout_s: float,
    ) -> Generated:
        manifest = self.resolve(model)
        nz = int(manifest.architecture["nz"])
        start = gan.latent_for_seed(seed_from, nz, truncation)
        end = gan.latent_for_seed(seed_to, nz, truncation)
        images, stats = await self._run(
            manifest, gan.slerp(start, end, steps), request_id, timeout_s
        )
        return Generated(manifest.name, [seed_from, seed_to], images, stats)

    async def encode(self, generated: Generated, fmt: ImageFormat) -> bytes:
        """One image as itself, several as a grid."""
        if len(generated.images) == 1:
            return await self.encode_one(generated.images[0], fmt)
        return await self.encode_grid(generated.images, fmt)

    async def encode_one(self, image: torch.Tensor, fmt: ImageFormat) -> bytes:
        return await self.encoder.encode(image, fmt)

    async def encode_grid(self, images: torch.Tensor, fmt: ImageFormat) -> bytes:
        return await self.encoder.run(lambda: imaging.encode(imaging.grid(images), fmt))

    async def encode_each(self, images: torch.Tensor, fmt: ImageFormat) -> list[bytes]:
        return await self.encoder.run(lambda: [imaging.encode(im, fmt) for im in images])

    async def encode_animation(
        self, frames: torch.Tensor, fmt: ImageFormat, frame_ms: int
    ) -> bytes:
        return await self.encoder.run(imaging.animate, list(frames), fmt, frame_ms)
