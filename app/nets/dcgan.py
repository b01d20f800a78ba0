"""The DCGAN generator of the PyTorch DCGAN tutorial (Radford et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn


class DCGANGenerator(nn.Module):
    """Latent [N, nz] (or [N, nz, 1, 1]) to images [N, nc, 64, 64] in [-1, 1].

    Module names follow the tutorial (`main.0`, `main.1`, ...) so its checkpoints load as is.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        self.nz = nz
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]
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
