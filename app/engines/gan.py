"""GAN sampling: per-image seeded latents, truncation, spherical interpolation."""

from __future__ import annotations

import threading

import torch
from torch import nn

MAX_SEED = 2**32 - 1

_local = threading.local()


def _generator() -> torch.Generator:
    """This thread's CPU generator, re-seeded for each latent: creating one costs more than
    drawing a latent (2.1 against 1.3 µs)."""
    generator: torch.Generator | None = getattr(_local, "generator", None)
    if generator is None:
        generator = _local.generator = torch.Generator(device="cpu")
    return generator


def latent_for_seed(seed: int, nz: int, truncation: float | None = None) -> torch.Tensor:
    """The latent of one image. It depends only on (seed, nz, truncation), never on batching.

    Truncation (BigGAN): entries whose magnitude exceeds the threshold are redrawn from the
    same seeded stream until none does, trading variety for fidelity.
    """
    generator = _generator().manual_seed(seed)
    latent = torch.randn(nz, generator=generator)
    if truncation is not None:
        for _ in range(1000):
            outside = latent.abs() > truncation
            count = int(outside.sum())
            if count == 0:
                break
            latent[outside] = torch.randn(count, generator=generator)
        else:  # only reachable with a vanishing threshold; clamp rather than loop forever
            latent.clamp_(-truncation, truncation)
    return latent


def latents_for_seeds(
    seed: int, n: int, nz: int, truncation: float | None = None
) -> torch.Tensor:
    """Image i of a request with seed s uses seed s + i."""
    if n == 1:  # most requests: a view, not a copy by `stack`
        return latent_for_seed(seed, nz, truncation)[None]
    return torch.stack([latent_for_seed(seed + i, nz, truncation) for i in range(n)])


def slerp(a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` points on the great circle from a to b, both ends included ([steps, nz])."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype)[:, None]
    # The angle in float64: latents truncated to a tiny threshold have a float32 norm of 0.
    a64, b64 = a.double(), b.double()
    norms = a64.norm() * b64.norm()
    if norms == 0:  # a zero latent has no direction: lerp
        return (1 - t) * a + t * b
    omega = torch.arccos(((a64 * b64).sum() / norms).clamp(-1, 1)).to(a.dtype)
    if omega.abs() < 1e-6:  # parallel vectors: slerp degenerates to lerp
        return (1 - t) * a + t * b
    sin_omega = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin_omega) * a + (torch.sin(t * omega) / sin_omega) * b


def to_uint8_images(output: torch.Tensor) -> torch.Tensor:
    """Generator output [N, C, H, W] in [-1, 1] to uint8 [N, H, W, C] on the CPU."""
    pixels = ((output.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().cpu()


@torch.inference_mode()
def sample(
    generator: nn.Module, latents: torch.Tensor, device: torch.device, max_images: int
) -> torch.Tensor:
    """Run the generator over latents in passes of at most `max_images`."""
    outputs = [
        to_uint8_images(generator(chunk.to(device, non_blocking=True)))
        for chunk in torch.split(latents, max(1, max_images))
    ]
    return torch.cat(outputs)
