"""VGG19 feature extractor for style transfer, truncated after the deepest layer in use."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

# Convolutions per block of VGG19 (Simonyan & Zisserman 2014, configuration E).
BLOCKS: tuple[tuple[int, int], ...] = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))
CONV_NAMES: tuple[str, ...] = tuple(
    f"block{b}_conv{k}" for b, (_, convs) in enumerate(BLOCKS, start=1)
    for k in range(1, convs + 1)
)


def relu_name(conv: str) -> str:
    """block4_conv2 -> relu4_2, the names the style-transfer literature uses."""
    block, conv_index = conv.removeprefix("block").split("_conv")
    return f"relu{block}_{conv_index}"


LAYER_ORDER: tuple[str, ...] = tuple(relu_name(c) for c in CONV_NAMES)


class VGG19Features(nn.Module):
    """Runs VGG19 up to the deepest requested ReLU and returns those activations.

    Parameters are named `block{b}_conv{k}.weight/bias` so converted checkpoints load as is.
    """

    def __init__(self, last_layer: str = "relu5_1", pooling: str = "max") -> None:
        super().__init__()
        if last_layer not in LAYER_ORDER:
            raise ValueError(f"unknown layer {last_layer!r}")
        depth = LAYER_ORDER.index(last_layer) + 1
        self.convs = nn.ModuleDict()
        in_channels = 3
        for name in CONV_NAMES[:depth]:
            block = int(name[5]) - 1
            out_channels = BLOCKS[block][0]
            self.convs[name] = nn.Conv2d(in_channels, out_channels, 3, padding=1)
            in_channels = out_channels
        self.pool: nn.Module = nn.MaxPool2d(2, 2) if pooling == "max" else nn.AvgPool2d(2, 2)

    def load_conv_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, parameter in self.convs.named_parameters():  # "block1_conv1.weight", ...
            parameter.data.copy_(tensors[name])

    def forward(self, x: torch.Tensor, layers: Iterable[str],
                keep: Callable[[int, int], torch.Tensor] | None = None,
                ) -> dict[str, torch.Tensor]:
        """Activations at `layers`. `keep(h, w)`, when given, is a [B, 1, h, w] mask each
        activation is multiplied by: images padded to a larger shape then see zeros beyond
        their own edge at every layer, as each convolution's zero padding shows them when
        they run alone, so their features are the same as unpadded."""
        wanted = set(layers)
        out: dict[str, torch.Tensor] = {}
        previous_block = 1
        for name, conv in self.convs.items():
            block = int(name[5])
            if block != previous_block:
                x = self.pool(x)
                previous_block = block
                if keep is not None:  # a pool over the edge: a cell the image alone drops
                    x = x * keep(*x.shape[-2:]).to(x.dtype)
            x = torch.relu(conv(x))
            if keep is not None:
                x = x * keep(*x.shape[-2:]).to(x.dtype)
            relu = relu_name(name)
            if relu in wanted:
                out[relu] = x
                if len(out) == len(wanted):
                    break
        return out


def deepest(layers: Sequence[str]) -> str:
    return max(layers, key=LAYER_ORDER.index)
