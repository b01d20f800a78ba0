"""The DCGAN generator of the PyTorch DCGAN tutorial (Radford et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn


class DCGANGenerator(nn.Module):
    """Latent [N, nz] (or [N, nz, 1, 1]) to images [N, nc, size, size] in [-1, 1].

    Module names follow the tutorial (`main.0`, `main.1`, ...) so its checkpoints load as is.
    `size` 64 is the tutorial's network; each doubling adds one block in front, with twice
    the feature maps (128: ngf * 16 at 4x4).
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, size: int = 64) -> None:
        super().__init__()
        if size < 16 or size & (size - 1):
            raise ValueError(f"a DCGAN's size must be a power of two >= 16, not {size}")
        self.nz = nz
        blocks = size.bit_length() - 3  # 4x4 after the first block, x2 per block and at the end
        widths = [ngf * 2 ** (blocks - 1 - i) for i in range(blocks)]
        layers: list[nn.Module] = []
        in_channels = nz
        for i, width in enumerate(widths):
            stride, padding = (1, 0) if i == 0 else (2, 1)
            layers += [
                nn.ConvTranspose2d(in_channels, width, 4, stride, padding, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            in_channels = width
        layers += [nn.ConvTranspose2d(in_channels, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() == 2:
            latent = latent[:, :, None, None]
        images: torch.Tensor = self.main(latent)
        return images
