"""Neural style transfer (Gatys, Ecker & Bethge 2016) as an optimisation over pixels.

Pure PyTorch: tensors in, tensors out, progress through a callback, cancellation through a
predicate checked every step. Images are uint8 [H, W, 3] RGB tensors on the CPU.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from app.engines.optim import BatchedAdam, BatchedLBFGS
from app.nets.vgg import VGG19Features, deepest

Optimizer = Literal["lbfgs", "adam"]
Precision = Literal["fp32", "bf16"]
Init = Literal["content", "noise", "random"]
PreserveColor = Literal["none", "luminance", "match"]


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
        mean = architecture.get("mean", CAFFE.mean)
        return InputSpace(mean=tuple(float(v) for v in mean))  # type: ignore[union-attr, arg-type]
    if name == "imagenet":
        return IMAGENET
    raise ValueError(f"unknown input space {name!r}")


@dataclass(frozen=True)
class StyleOptions:
    steps: int = 300
    size: int = 512
    content_weight: float = 1.0
    style_weight: float = 30.0
    tv_weight: float = 1.0
    optimizer: Optimizer = "lbfgs"
    init: Init = "content"
    style_scale: float = 1.0
    style_blend: tuple[float, ...] | None = None
    preserve_color: PreserveColor = "none"
    seed: int = 0
    content_layer: str = "relu4_2"
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    lbfgs_history: int = 100
    # bf16 autocast runs the convolutions in bfloat16; Gram matrices and losses stay fp32
    # (fp16 overflows in the Gram matrix). channels_last suits tensor cores on GPUs.
    precision: Precision = "fp32"
    channels_last: bool = False
    adam_lr: float = 5.0
    progress_every: int = 10
    preview_every: int = 0  # 0: no previews
    preview_size: int = 160


@dataclass
class Losses:
    content: float
    style: float
    tv: float
    total: float


@dataclass
class Progress:
    step: int
    steps: int
    losses: Losses
    preview: torch.Tensor | None = None  # uint8 [h, w, 3], when a preview was due


@dataclass
class StyleResult:
    image: torch.Tensor  # uint8 [H, W, 3]
    losses: Losses
    steps: int
    seconds: float
    history: list[Losses] = field(default_factory=list)


class Cancelled(Exception):
    """The job was cancelled between two steps."""


# VGG19 pools four times before relu5_1: a side under 16 px would vanish.
MIN_SIDE = 16


def resize_long_side(image: torch.Tensor, long_side: int, min_side: int = 1) -> torch.Tensor:
    """uint8 [H, W, 3] resized (antialiased) so that max(H, W) == long_side, unless that
    would make the short side smaller than `min_side`."""
    h, w = image.shape[:2]
    scale = max(long_side / max(h, w), min_side / min(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    x = image.permute(2, 0, 1).unsqueeze(0).float()
    y = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous()


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix normalised by C*H*W, always in fp32 (also under autocast)."""
    b, c, h, w = features.shape
    with torch.autocast(features.device.type, enabled=False):
        flat = features.float().reshape(b, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def features(vgg: VGG19Features, x: torch.Tensor, layers: Sequence[str],
             options: StyleOptions) -> dict[str, torch.Tensor]:
    if options.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(x.device.type, dtype=torch.bfloat16,
                        enabled=options.precision == "bf16"):
        return vgg(x, layers)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (
        x[..., :, 1:] - x[..., :, :-1]
    ).pow(2).mean()


def match_color(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Recolour `style` so its RGB mean and covariance equal the content's (uint8 images)."""
    s = style.reshape(-1, 3).double()
    c = content.reshape(-1, 3).double()
    s_mean, c_mean = s.mean(0), c.mean(0)
    s_cov = torch.cov((s - s_mean).T) + 1e-5 * torch.eye(3, dtype=torch.float64)
    c_cov = torch.cov((c - c_mean).T) + 1e-5 * torch.eye(3, dtype=torch.float64)

    def sqrtm(m: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(m)
        values = values.clamp_min(1e-8).sqrt()
        if inverse:
            values = 1 / values
        return vectors @ torch.diag(values) @ vectors.T

    transform = sqrtm(c_cov) @ sqrtm(s_cov, inverse=True)
    out = (s - s_mean) @ transform.T + c_mean
    return out.round().clamp(0, 255).to(torch.uint8).reshape(style.shape)


_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                       [0.5, -0.418688, -0.081312]], dtype=torch.float64)


def keep_luminance(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The result's luminance (Y) with the content's chroma (Cb, Cr)."""
    r = result.reshape(-1, 3).double() @ _YCBCR.T
    c = content.reshape(-1, 3).double() @ _YCBCR.T
    mixed = torch.cat([r[:, :1], c[:, 1:]], dim=1)
    rgb = mixed @ torch.linalg.inv(_YCBCR).T
    return rgb.round().clamp(0, 255).to(torch.uint8).reshape(result.shape)


class GramCache:
    """Gram matrices of style images, shared across jobs (a popular style is analysed once).

    Keyed by the network, the exact pixels of the resized style image, its input space and
    the layers; least recently used entries go first. Thread-safe.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[object, ...], dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(vgg: VGG19Features, style: torch.Tensor, space: InputSpace,
            options: StyleOptions) -> tuple[object, ...]:
        digest = hashlib.sha256(style.contiguous().numpy().tobytes()).hexdigest()
        return (id(vgg), digest, tuple(style.shape), space, tuple(options.style_layers),
                options.precision)

    def get(self, key: tuple[object, ...]) -> dict[str, torch.Tensor] | None:
        with self._lock:
            grams = self._entries.get(key)
            if grams is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return grams

    def put(self, key: tuple[object, ...], grams: dict[str, torch.Tensor]) -> None:
        with self._lock:
            self._entries[key] = grams
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)


class StyleTargets:
    """Content features and blended Gram targets, computed once per job."""

    def __init__(
        self, vgg: VGG19Features, space: InputSpace, content: torch.Tensor,
        styles: Sequence[torch.Tensor], blend: Sequence[float], options: StyleOptions,
        device: torch.device, cache: GramCache | None = None,
    ) -> None:
        with torch.no_grad():
            x = space.preprocess(content, device)
            self.content = features(vgg, x, [options.content_layer], options)[
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
        feats = features(vgg, space.preprocess(style, device), options.style_layers, options)
        grams = {layer: gram(feats[layer]) for layer in options.style_layers}
        if cache is not None and key is not None:
            cache.put(key, grams)
        return grams


def batch_losses(
    vgg: VGG19Features, x: torch.Tensor, content_target: torch.Tensor,
    grams: dict[str, torch.Tensor], weights: torch.Tensor, options: StyleOptions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (total, content, style, tv) for a batch x [B, 3, H, W], all fp32 [B].

    `weights` [B, 3] holds each image's content, style and TV weights.
    """
    layers = [options.content_layer, *options.style_layers]
    feats = features(vgg, x, layers, options)
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


@dataclass
class StyleJob:
    """One image to paint, as the batch engine takes it."""

    content: torch.Tensor
    styles: Sequence[torch.Tensor]
    options: StyleOptions
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None


def output_shape(content_shape: Sequence[int], size: int) -> tuple[int, int]:
    """(H, W) of the result for a content image of this shape."""
    h, w = content_shape[0], content_shape[1]
    scale = max(size / max(h, w), MIN_SIDE / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def batch_key(options: StyleOptions, content_shape: Sequence[int]) -> tuple[object, ...]:
    """Jobs with equal keys can share forward and backward passes."""
    return (output_shape(content_shape, options.size), options.steps, options.optimizer,
            options.lbfgs_history, options.adam_lr, options.content_layer,
            options.style_layers, options.precision, options.channels_last)


@dataclass
class _Prepared:
    content: torch.Tensor  # resized uint8
    targets: StyleTargets
    x0: torch.Tensor


def _prepare(vgg: VGG19Features, job: StyleJob, space: InputSpace, device: torch.device,
             cache: GramCache | None) -> _Prepared:
    options = job.options
    if not job.styles:
        raise ValueError("at least one style image is needed")
    blend = list(options.style_blend or [1.0] * len(job.styles))
    if len(blend) != len(job.styles):
        raise ValueError(f"{len(blend)} style_blend weights for {len(job.styles)} style images")
    content = resize_long_side(job.content, options.size, MIN_SIDE)
    style_side = round(options.size * options.style_scale)
    styles = [resize_long_side(s, style_side, MIN_SIDE) for s in job.styles]
    if options.preserve_color == "match":
        styles = [match_color(s, content) for s in styles]
    needed = [options.content_layer, *options.style_layers]
    if deepest(needed) not in vgg_layers(vgg):
        raise ValueError("the network is truncated before a layer this job needs")
    targets = StyleTargets(vgg, space, content, styles, blend, options, device, cache)
    return _Prepared(content, targets, initial_image(content, options, space, device))


def stylize_batch(
    vgg: VGG19Features,
    jobs: Sequence[StyleJob],
    *,
    device: torch.device,
    space: InputSpace = CAFFE,
    gram_cache: GramCache | None = None,
) -> list[StyleResult | Exception]:
    """Optimise several images of one output size together, each with its own targets,
    weights and optimiser state; one forward and backward pass per step for all of them.

    Returns, per job, its result or the exception that ended it (Cancelled when its
    `should_stop` said so: it leaves the batch at once and its memory goes with it).
    """
    started = time.perf_counter()
    lead = jobs[0].options
    shape = output_shape(jobs[0].content.shape, lead.size)
    if any(batch_key(j.options, j.content.shape) != batch_key(lead, jobs[0].content.shape)
           for j in jobs):
        raise ValueError("jobs of one batch must share output size and loop settings")
    prepared = [_prepare(vgg, job, space, device, gram_cache) for job in jobs]
    x = torch.cat([p.x0 for p in prepared]).requires_grad_(True)
    content_target = torch.cat([p.targets.content for p in prepared])
    grams = {layer: torch.cat([p.targets.grams[layer] for p in prepared])
             for layer in lead.style_layers}
    weights = torch.tensor([[j.options.content_weight, j.options.style_weight,
                             j.options.tv_weight] for j in jobs], device=device)
    low, high = space.pixel_bounds(device)
    optimizer: BatchedLBFGS | BatchedAdam
    if lead.optimizer == "lbfgs":
        optimizer = BatchedLBFGS(x, history=lead.lbfgs_history)
    else:
        lr = lead.adam_lr / float(torch.tensor(space.std).mean()) / space.scale
        optimizer = BatchedAdam(x, lr=lr)
    outcomes: list[StyleResult | Exception | None] = [None] * len(jobs)
    histories: list[list[Losses]] = [[] for _ in jobs]
    alive = list(range(len(jobs)))  # job index of each batch row

    def leave(rows_out: dict[int, Exception]) -> None:
        nonlocal x, content_target, grams, weights, alive
        for row, error in rows_out.items():
            outcomes[alive[row]] = error
        kept = [r for r in range(len(alive)) if r not in rows_out]
        index = torch.tensor(kept, device=device, dtype=torch.long)
        x = x.detach()[index].requires_grad_(True)
        content_target = content_target[index]
        grams = {k: v[index] for k, v in grams.items()}
        weights = weights[index]
        optimizer.keep(index)
        alive = [alive[r] for r in kept]
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for step in range(1, lead.steps + 1):
        stopped = {row: Cancelled() for row, j in enumerate(alive)
                   if (stop := jobs[j].should_stop) is not None and stop()}
        if stopped:
            leave(stopped)
        if not alive:
            break
        x.grad = None
        total, content_loss, style_loss, tv_loss = batch_losses(
            vgg, x, content_target, grams, weights, lead)
        total.sum().backward()
        assert x.grad is not None
        if isinstance(optimizer, BatchedLBFGS):
            optimizer.step(x, x.grad)  # unconstrained: the result is clamped when decoded
        else:
            optimizer.step(x, x.grad, bounds=(low, high))
        due = [_due(jobs[j].options, step) for j in alive]
        if not any(report or preview for report, preview in due):
            continue
        # Reading losses makes the host wait for the device: only at report steps.
        values = torch.stack([content_loss, style_loss, tv_loss, total], 1).detach().tolist()
        diverged: dict[int, Exception] = {}
        for row, (j, (report, preview_due)) in enumerate(zip(alive, due, strict=True)):
            if not (report or preview_due):
                continue
            current = Losses(*values[row])
            if not math.isfinite(current.total):
                diverged[row] = FloatingPointError(f"the loss diverged at step {step}")
                continue
            histories[j].append(current)
            if jobs[j].on_progress is not None:
                preview = None
                if preview_due:
                    preview = resize_long_side(space.deprocess(x[row:row + 1]),
                                               jobs[j].options.preview_size)
                jobs[j].on_progress(Progress(step, lead.steps, current, preview))  # type: ignore[misc]
        if diverged:
            leave(diverged)
            if not alive:
                break

    if alive:
        with torch.no_grad():
            total, content_loss, style_loss, tv_loss = batch_losses(
                vgg, x, content_target, grams, weights, lead)
        finals = torch.stack([content_loss, style_loss, tv_loss, total], 1).tolist()
        seconds = time.perf_counter() - started
        for row, j in enumerate(alive):
            image = space.deprocess(x[row:row + 1])
            if jobs[j].options.preserve_color == "luminance":
                image = keep_luminance(image, prepared[j].content)
            assert image.shape[:2] == shape
            outcomes[j] = StyleResult(image, Losses(*finals[row]), lead.steps, seconds,
                                      histories[j])
    return [o if o is not None else Cancelled() for o in outcomes]


def _due(options: StyleOptions, step: int) -> tuple[bool, bool]:
    last = step == options.steps
    report = last or step % max(1, options.progress_every) == 0
    preview = options.preview_every > 0 and (last or step % options.preview_every == 0)
    return report, preview


def stylize(
    vgg: VGG19Features,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    options: StyleOptions,
    *,
    device: torch.device,
    space: InputSpace = CAFFE,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    gram_cache: GramCache | None = None,
) -> StyleResult:
    """Paint `content` in the style of `styles`; returns the image and its final losses."""
    job = StyleJob(content, styles, options, on_progress, should_stop)
    (outcome,) = stylize_batch(vgg, [job], device=device, space=space, gram_cache=gram_cache)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def vgg_layers(vgg: VGG19Features) -> list[str]:
    from app.nets.vgg import relu_name

    return [relu_name(name) for name in vgg.convs]
