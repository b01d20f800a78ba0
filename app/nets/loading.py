"""Build a network from its manifest and load its safetensors weights onto a device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from app.nets.dcgan import DCGANGenerator
from app.nets.vgg import VGG19Features


def build_gan(architecture: dict[str, Any]) -> nn.Module:
    kind = architecture.get("type")
    if kind == "dcgan":
        return DCGANGenerator(
            nz=int(architecture.get("nz", 100)),
            ngf=int(architecture.get("ngf", 64)),
            nc=int(architecture.get("nc", 3)),
            size=int(architecture.get("size", 64)),
        )
    raise ValueError(f"unknown GAN architecture {kind!r}")


def load_gan(architecture: dict[str, Any], weights: Path, device: str) -> nn.Module:
    net = build_gan(architecture)
    # strict: a manifest that names the wrong architecture must fail loudly, not half-load
    net.load_state_dict(load_file(str(weights), device="cpu"), strict=True)
    net.eval().requires_grad_(False)
    return net.to(torch.device(device))


def load_vgg(architecture: dict[str, Any], weights: Path, device: str,
             last_layer: str = "relu5_1") -> VGG19Features:
    if architecture.get("type") != "vgg19":
        raise ValueError(f"unknown VGG architecture {architecture.get('type')!r}")
    net = VGG19Features(last_layer=last_layer, pooling=str(architecture.get("pooling", "max")))
    net.load_conv_weights(load_file(str(weights), device="cpu"))
    net.eval().requires_grad_(False)
    return net.to(torch.device(device))
