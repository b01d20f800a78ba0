"""The losses of Gatys et al.: features, Gram matrices, per-job targets and the start image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from app.engines.style.cache import GramCache
from app.engines.style.options import StyleOptions
from app.engines.style.space import InputSpace
from app.nets.vgg import VGG19Features


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalised by C*H*W, always in fp32 (also under autocast)."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        flat = features.float().reshape(b, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def features(vgg: VGG19Features, x: torch.Tensor, layers: Sequence[str],
             options: StyleOptions, regions: Regions | None = None) -> dict[str, torch.Tensor]:
    """VGG activations of x at `layers`, in the job's precision and memory format; with
    `regions` (rows padded to a shape bucket), each row's features are those of its own
    region alone: zero beyond its edge at every layer."""
    if options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    keep = None if regions is None else regions.inside
    # No cast cache: a captured step (CUDA graphs) must not keep casts made outside its
    # memory, and here it saves nothing (the weights need no grad, so are never cached,
    # and x is cast once per pass).
    with torch.autocast(x.device.type, dtype=torch.bfloat16,
                        enabled=options.precision == "bf16", cache_enabled=False):
        activations: dict[str, torch.Tensor] = vgg(x, layers, keep)
        return activations


class StyleTargets:
    """Content features and blended Gram targets, computed once per job."""

    def __init__(
        self, vgg: VGG19Features, space: InputSpace, content: torch.Tensor,
        styles: Sequence[torch.Tensor], blend: Sequence[float], options: StyleOptions,
        device: torch.device, cache: GramCache | None = None,
        shape: tuple[int, int] | None = None,
    ) -> None:
        """`shape`: the compute shape, when the content is padded up to a shape bucket."""
        with torch.no_grad():
            x = pad_zeros(space.preprocess(content, device), shape)
            natural = (int(content.shape[0]), int(content.shape[1]))
            regions = Regions([natural], shape, device) if shape not in (None, natural) else None
            self.content = features(vgg, x, [options.content_layer], options, regions)[
                options.content_layer].float()
            total = float(sum(blend))
            grams: dict[str, torch.Tensor] = {}
            for style, weight in zip(styles, blend, strict=True):
                per_style = self._style_grams(vgg, space, style, options, device, cache)
                for layer in options.style_layers:
                    g = per_style[layer] * (weight / total)
                    grams[layer] = grams[layer] + g if layer in grams else g
            self.grams = grams

    @staticmethod
    def _style_grams(
        vgg: VGG19Features, space: InputSpace, style: torch.Tensor, options: StyleOptions,
        device: torch.device, cache: GramCache | None,
    ) -> dict[str, torch.Tensor]:
        key = GramCache.key(vgg, style, space, options) if cache is not None else None
        if cache is not None and key is not None and (cached := cache.get(key)) is not None:
            return cached
        # A style image's forward pass runs once per image: cuDNN's autotuning, which the
        # benchmark mode runs for every new input shape, would cost more than it saves.
        with torch.backends.cudnn.flags(
                enabled=torch.backends.cudnn.enabled, benchmark=False,
                deterministic=torch.backends.cudnn.deterministic,
                allow_tf32=torch.backends.cudnn.allow_tf32):
            feats = features(vgg, space.preprocess(style, device), options.style_layers,
                             options)
        grams = {layer: gram(feats[layer]) for layer in options.style_layers}
        if cache is not None and key is not None:
            cache.put(key, grams)
        return grams


def pad_zeros(x: torch.Tensor, shape: tuple[int, int] | None) -> torch.Tensor:
    """x [B, 3, h, w] in network space extended to `shape` at the bottom and right with
    zeros: what the network's own zero padding shows the first layer of the unpadded image,
    so the image's edge looks the same to the losses, padded or not."""
    if shape is None or tuple(x.shape[-2:]) == shape:
        return x
    return F.pad(x, (0, shape[1] - x.shape[-1], 0, shape[0] - x.shape[-2]))


class Regions:
    """Where each row's own image lies in a batch padded to a shape bucket: at the top left,
    `sizes[row]` = (h, w) of the compute shape. The network's activations are masked to it
    at every layer and the losses look only there, so a padded row's objective is its
    unpadded objective, up to float rounding. (Measured before: masking the losses alone
    left the receptive fields reaching over the edge, which cost 10-110% of textbook loss at
    128 px; scoring the whole padded image let the optimiser park style statistics in the
    padding, 2x worse.)"""

    def __init__(self, sizes: Sequence[tuple[int, int]], shape: tuple[int, int],
                 device: torch.device) -> None:
        self.sizes, self.shape, self.device = list(sizes), shape, device
        self._masks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def pixels(self) -> torch.Tensor:
        """[B, 1, H, W]: 1 on each row's own pixels (the padding stays zero: its gradient
        is masked, so no optimiser ever moves it)."""
        return self.mask(*self.shape)[0]

    def subset(self, rows: Sequence[int]) -> Regions:
        return Regions([self.sizes[r] for r in rows], self.shape, self.device)

    def inside(self, h: int, w: int) -> torch.Tensor:
        """[B, 1, h, w]: 1 on each row's own cells of a feature map of this size."""
        return self.mask(h, w)[0]

    def mask(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, 1, h, w] 1 inside each row's region of a feature map of this size, [B] the
        region's area): the cells the image alone has after as many 2x2 pools (each floors
        an odd side, as the image's own pooling does)."""
        if (h, w) not in self._masks:
            pools_h, pools_w = _pools(self.shape[0], h), _pools(self.shape[1], w)
            rows = torch.tensor([max(1, rh >> pools_h) for rh, _ in self.sizes],
                                device=self.device)
            cols = torch.tensor([max(1, rw >> pools_w) for _, rw in self.sizes],
                                device=self.device)
            inside = ((torch.arange(h, device=self.device)[None, :, None] < rows[:, None, None])
                      & (torch.arange(w, device=self.device)[None, None, :]
                         < cols[:, None, None]))
            self._masks[(h, w)] = (inside[:, None].float(), (rows * cols).float())
        return self._masks[(h, w)]


def _pools(full: int, side: int) -> int:
    """How many 2x2 pools take a side of `full` cells down to `side`."""
    pools = 0
    while full > side:
        full //= 2
        pools += 1
    return pools


def _masked_losses(
    feats: dict[str, torch.Tensor], x: torch.Tensor, content_target: torch.Tensor,
    grams: dict[str, torch.Tensor], options: StyleOptions, regions: Regions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The losses of `batch_losses`, each over its row's region only."""
    # The features are zero beyond each row's region (`features` masks them): sums over
    # the whole map are sums over the region, divided by the region's own area.
    f = feats[options.content_layer].float()
    _, area = regions.mask(*f.shape[-2:])
    content = (f - content_target).pow(2).sum(dim=(1, 2, 3)) / (f.shape[1] * area)
    style = torch.zeros(x.shape[0], device=x.device)
    for layer in options.style_layers:
        f = feats[layer]
        _, area = regions.mask(*f.shape[-2:])
        b, c = f.shape[:2]
        with torch.autocast(f.device.type, enabled=False):
            flat = f.float().reshape(b, c, -1)
            g = torch.bmm(flat, flat.transpose(1, 2)) / (c * area)[:, None, None]
        style = style + (g - grams[layer]).pow(2).mean(dim=(1, 2))
    mask, _ = regions.mask(*x.shape[-2:])
    xf = x.float()
    down = mask[..., 1:, :] * mask[..., :-1, :]
    right = mask[..., :, 1:] * mask[..., :, :-1]
    tv = ((xf[..., 1:, :] - xf[..., :-1, :]).pow(2) * down).sum(dim=(1, 2, 3)) / (
        3 * down.sum(dim=(1, 2, 3))) + ((xf[..., :, 1:] - xf[..., :, :-1]).pow(2) * right).sum(
        dim=(1, 2, 3)) / (3 * right.sum(dim=(1, 2, 3)))
    return content, style, tv


def batch_losses(
    vgg: VGG19Features, x: torch.Tensor, content_target: torch.Tensor,
    grams: dict[str, torch.Tensor], weights: torch.Tensor, options: StyleOptions,
    regions: Regions | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (total, content, style, tv) for a batch x [B, 3, H, W], all fp32 [B].

    `weights` [B, 3] holds each image's content, style and TV weights; `regions`, when
    images were padded to a shape bucket, where each one lies.
    """
    layers = [options.content_layer, *options.style_layers]
    feats = features(vgg, x, layers, options, regions)
    if regions is not None:
        content, style, tv = _masked_losses(feats, x, content_target, grams, options, regions)
        total = weights[:, 0] * content + weights[:, 1] * style + weights[:, 2] * tv
        return total, content, style, tv
    content = (feats[options.content_layer].float() - content_target).pow(2).mean(dim=(1, 2, 3))
    style = torch.zeros(x.shape[0], device=x.device)
    for layer in options.style_layers:
        style = style + (gram(feats[layer]) - grams[layer]).pow(2).mean(dim=(1, 2))
    xf = x.float()
    tv = (xf[..., 1:, :] - xf[..., :-1, :]).pow(2).mean(dim=(1, 2, 3)) + (
        xf[..., :, 1:] - xf[..., :, :-1]).pow(2).mean(dim=(1, 2, 3))
    total = weights[:, 0] * content + weights[:, 1] * style + weights[:, 2] * tv
    return total, content, style, tv


def losses(
    vgg: VGG19Features, x: torch.Tensor, targets: StyleTargets, options: StyleOptions
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, content, style, tv) of one image x [1, 3, H, W], as fp32 scalars."""
    weights = torch.tensor([[options.content_weight, options.style_weight, options.tv_weight]],
                           device=x.device)
    total, content, style, tv = batch_losses(vgg, x, targets.content, targets.grams, weights,
                                             options)
    return total[0], content[0], style[0], tv[0]


def initial_image(
    content: torch.Tensor, options: StyleOptions, space: InputSpace, device: torch.device,
    shape: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The image the optimisation starts from: the content, the content plus noise, or noise;
    zero-padded to the compute `shape` when given."""
    return pad_zeros(_initial_image(content, options, space, device), shape)


def _initial_image(
    content: torch.Tensor, options: StyleOptions, space: InputSpace, device: torch.device
) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    base = space.preprocess(content, device)
    if options.init == "content":
        return base.clone()
    # Noise in the network's own units: about a quarter of the 0..255 pixel range.
    sigma = 64.0 / space.scale / float(torch.tensor(space.std).mean())
    noise = torch.randn(base.shape, generator=generator).to(device) * sigma
    if options.init == "noise":
        return base + noise
    low, high = space.pixel_bounds(device)
    return ((low + high) / 2 + noise).clamp(low, high)
