"""The networks a run trains: the served DCGAN generator (`app.nets.dcgan`, so the result
loads through `load_gan` like any catalog model) and its mirror-image discriminator."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from app.nets.dcgan import DCGANGenerator

SIZES = (64, 128)


def architecture(size: int, nz: int, ngf: int) -> dict[str, Any]:
    """The manifest's `[architecture]` table of a trained generator (what `build_gan` reads)."""
    return {"type": "dcgan", "nz": nz, "ngf": ngf, "nc": 3, "size": size}


class Discriminator(nn.Module):
    """Images [N, nc, size, size] in [-1, 1] to one logit each ([N]): strided 4x4
    convolutions halving the side down to 4x4 (LeakyReLU 0.2, batch norm but on the first),
    then a 4x4 convolution to one channel (Radford et al. 2015). 64 px: ndf, 2, 4, 8 ndf; each
    doubling of the size adds one block (128 px: up to 16 ndf)."""

    def __init__(self, ndf: int = 64, nc: int = 3, size: int = 64) -> None:
        super().__init__()
        if size < 16 or size & (size - 1):
            raise ValueError(f"a DCGAN's size must be a power of two >= 16, not {size}")
        blocks = size.bit_length() - 3
        layers: list[nn.Module] = []
        in_channels = nc
        for i in range(blocks):
            width = ndf * 2 ** i
            layers.append(nn.Conv2d(in_channels, width, 4, 2, 1, bias=False))
            if i > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            in_channels = width
        layers.append(nn.Conv2d(in_channels, 1, 4, 1, 0, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.main(images)
        return logits.flatten()


def dcgan_init(net: nn.Module, generator: torch.Generator) -> None:
    """The DCGAN initialisation: convolutions N(0, 0.02), batch-norm scales N(1, 0.02),
    shifts 0; drawn from `generator`, so a seed gives the same networks on any device."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02, generator=generator)
            nn.init.zeros_(module.bias)


def build(size: int, nz: int, ngf: int, ndf: int, seed: int) -> tuple[DCGANGenerator,
                                                                        Discriminator]:
    """Generator and discriminator, initialised from `seed`, on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    g = DCGANGenerator(nz=nz, ngf=ngf, nc=3, size=size)
    d = Discriminator(ndf=ndf, nc=3, size=size)
    dcgan_init(g, generator)
    dcgan_init(d, generator)
    return g, d


def parameter_bytes(size: int, nz: int, ngf: int, ndf: int) -> tuple[int, int]:
    """Bytes of the generator's and the discriminator's state (float32), without building
    them in memory."""
    with torch.device("meta"):
        g = DCGANGenerator(nz=nz, ngf=ngf, nc=3, size=size)
        d = Discriminator(ndf=ndf, nc=3, size=size)
    return (sum(t.numel() * 4 for t in g.state_dict().values()),
            sum(t.numel() * 4 for t in d.state_dict().values()))
