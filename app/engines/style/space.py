"""The pixel encodings VGG weights expect (Caffe or ImageNet) and how to convert to them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class InputSpace:
    """How a VGG's weights expect pixels: Caffe (BGR 0..255 minus mean) or ImageNet (RGB 0..1)."""

    bgr: bool = True
    mean: tuple[float, float, float] = (103.939, 116.779, 123.68)  # in the network's order
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    scale: float = 1.0  # pixels are divided by this before mean/std (255 for 0..1 inputs)

    def preprocess(self, image: torch.Tensor, device: torch.device) -> torch.Tensor:
        """uint8 [H, W, 3] RGB to a [1, 3, H, W] float network input."""
        x = image.to(device).permute(2, 0, 1).float().unsqueeze(0) / self.scale
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def deprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[1, 3, H, W] network input back to uint8 [H, W, 3] RGB on the CPU."""
        device = x.device
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        y = (x.detach().float() * std + mean) * self.scale
        if self.bgr:
            y = y.flip(1)
        return y.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous().cpu()

    def pixel_bounds(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel [1, 3, 1, 1] limits of valid pixels in network space."""
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1)
        return (0 - mean) / std, (255 / self.scale - mean) / std


CAFFE = InputSpace()
IMAGENET = InputSpace(bgr=False, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      scale=255.0)


def input_space(architecture: dict[str, object]) -> InputSpace:
    """The input space a VGG manifest declares (`input_space = "caffe" | "imagenet"`)."""
    name = architecture.get("input_space", "caffe")
    if name == "caffe":
        return InputSpace(mean=_channel_means(architecture.get("mean", CAFFE.mean)))
    if name == "imagenet":
        return IMAGENET
    raise ValueError(f"unknown input space {name!r}")


def _channel_means(value: object) -> tuple[float, float, float]:
    # A manifest is user-written TOML: reject anything but three numbers here, rather than
    # fail later with a shape error in the middle of a job.
    if (not isinstance(value, list | tuple) or len(value) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"an input space mean must be three numbers, not {value!r}")
    first, second, third = (float(v) for v in value)
    return first, second, third
