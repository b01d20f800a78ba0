"""The optimisation loop: jobs of one output size painted together, one pass per step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import torch

from app.engines.optim import BatchedAdam, BatchedLBFGS
from app.engines.style.cache import GramCache
from app.engines.style.colour import keep_luminance, match_color
from app.engines.style.options import Cancelled, Losses, Progress, StyleOptions, StyleResult
from app.engines.style.shapes import (
    MIN_SIDE,
    batch_key,
    compute_shape,
    resize_long_side,
)
from app.engines.style.space import CAFFE, InputSpace
from app.engines.style.targets import Regions, StyleTargets, batch_losses, initial_image
from app.nets.vgg import VGG19Features, deepest, relu_name


@dataclass
class StyleJob:
    """One image to paint, as the batch engine takes it."""

    content: torch.Tensor
    styles: Sequence[torch.Tensor]
    options: StyleOptions
    on_progress: Callable[[Progress], None] | None = None
    should_stop: Callable[[], bool] | None = None


def vgg_layers(vgg: VGG19Features) -> list[str]:
    """The ReLU layers this (possibly truncated) network computes, shallowest first."""
    return [relu_name(name) for name in vgg.convs]


@dataclass
class _Row:
    """One job in a running batch: its targets, where its image sits, its own progress."""

    job: StyleJob
    content: torch.Tensor  # the content at the output shape (uint8), for colour handling
    targets: StyleTargets
    x0: torch.Tensor  # the start image at the compute shape
    top: int  # offset of the output inside the compute shape
    left: int
    joined: float = field(default_factory=time.perf_counter)
    step: int = 0
    history: list[Losses] = field(default_factory=list)

    @property
    def options(self) -> StyleOptions:
        return self.job.options

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.content.shape[:2]
        return x[..., self.top:self.top + h, self.left:self.left + w]


def _prepare(vgg: VGG19Features, job: StyleJob, space: InputSpace, device: torch.device,
             cache: GramCache | None) -> _Row:
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
    natural = (int(content.shape[0]), int(content.shape[1]))
    shape = compute_shape(natural, options.bucket_px)
    targets = StyleTargets(vgg, space, content, styles, blend, options, device, cache, shape)
    return _Row(job, content, targets, initial_image(content, options, space, device, shape),
                0, 0)


Outcome = tuple[StyleJob, StyleResult | Exception]


class StyleBatch:
    """Style jobs of one compute shape and loop settings (one `batch_key`), optimised
    together, one forward and backward pass per step for all of them.

    Continuous batching: a job joins at any step boundary (`join`) and leaves when its own
    steps are done, when its `should_stop` says so (Cancelled) or when its loss diverges.
    Every row keeps its own step count, optimiser state, options and progress, so a job's
    result does not depend on who it shared the batch with (up to floating-point rounding).
    """

    def __init__(self, vgg: VGG19Features, key: tuple[object, ...], options: StyleOptions, *,
                 device: torch.device, space: InputSpace = CAFFE,
                 gram_cache: GramCache | None = None) -> None:
        if options.optimizer == "lbfgs" and options.precision == "bf16":
            # Measured: at 128 px the first L-BFGS step is tiny, the next gradient differs
            # from the first by bf16 rounding noise only, and the curvature pair built from
            # that noise sends the image to 1e7 at step 3. Adam is stable in bf16.
            raise ValueError("bf16 precision is unstable with L-BFGS; use fp32 or adam")
        self.vgg, self.key, self.device, self.space = vgg, key, device, space
        self.loop = options  # the loop settings every row shares (they are in the key)
        self.gram_cache = gram_cache
        self.rows: list[_Row] = []
        self.x: torch.Tensor | None = None  # [rows, 3, H, W], the pixels being optimised
        self.content_targets: torch.Tensor | None = None
        self.grams: dict[str, torch.Tensor] = {}
        self.weights: torch.Tensor | None = None  # [rows, 3]: content, style and TV weights
        self.optimizer: BatchedLBFGS | BatchedAdam | None = None
        self._regions: Regions | None = None  # set while any row is padded to the bucket
        self._bounds = space.pixel_bounds(device)

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, job: StyleJob) -> None:
        """Add a job; it takes its first step with the batch's next one."""
        if batch_key(job.options, job.content.shape) != self.key:
            raise ValueError("a job can only join a batch of its own batch key")
        row = _prepare(self.vgg, job, self.space, self.device, self.gram_cache)
        o = job.options
        weights = torch.tensor([[o.content_weight, o.style_weight, o.tv_weight]],
                               device=self.device)
        if self.x is None or self.optimizer is None:
            self.x = row.x0.requires_grad_(True)
            self.content_targets = row.targets.content
            self.grams = dict(row.targets.grams)
            self.weights = weights
            self.optimizer = self._new_optimizer(self.x)
        else:
            assert self.content_targets is not None and self.weights is not None
            self.x = torch.cat([self.x.detach(), row.x0]).requires_grad_(True)
            self.content_targets = torch.cat([self.content_targets, row.targets.content])
            self.grams = {k: torch.cat([v, row.targets.grams[k]]) for k, v in self.grams.items()}
            self.weights = torch.cat([self.weights, weights])
            self.optimizer.add(1)
        self.rows.append(row)
        self._update_regions()

    def _update_regions(self) -> None:
        sizes = [(int(r.content.shape[0]), int(r.content.shape[1])) for r in self.rows]
        shape = None if self.x is None else (int(self.x.shape[-2]), int(self.x.shape[-1]))
        padded = shape is not None and any(size != shape for size in sizes)
        self._regions = Regions(sizes, shape, self.device) if padded and shape else None

    def _new_optimizer(self, x: torch.Tensor) -> BatchedLBFGS | BatchedAdam:
        if self.loop.optimizer == "lbfgs":
            return BatchedLBFGS(x, history=self.loop.lbfgs_history)
        lr = self.loop.adam_lr / float(torch.tensor(self.space.std).mean()) / self.space.scale
        return BatchedAdam(x, lr=lr)

    def _drop(self, rows: Collection[int]) -> None:
        """Remove these rows, freeing their memory."""
        assert self.x is not None and self.optimizer is not None
        assert self.content_targets is not None and self.weights is not None
        kept = [r for r in range(len(self.rows)) if r not in rows]
        self.rows = [self.rows[r] for r in kept]
        if not self.rows:
            self.x = self.content_targets = self.weights = self.optimizer = None
            self.grams = {}
        else:
            index = torch.tensor(kept, device=self.device, dtype=torch.long)
            self.x = self.x.detach()[index].requires_grad_(True)
            self.content_targets = self.content_targets[index]
            self.grams = {k: v[index] for k, v in self.grams.items()}
            self.weights = self.weights[index]
            self.optimizer.keep(index)
        self._update_regions()
        if self.device.type == "cuda":
            # Give the dropped rows' memory back to the device, not only to torch's cache.
            torch.cuda.empty_cache()

    def step(self) -> list[Outcome]:
        """One optimisation step for every row; returns the jobs that left the batch."""
        outcomes: list[Outcome] = []
        stopped = [r for r, row in enumerate(self.rows)
                   if (stop := row.job.should_stop) is not None and stop()]
        if stopped:
            outcomes += [(self.rows[r].job, Cancelled()) for r in stopped]
            self._drop(stopped)
        if not self.rows:
            return outcomes
        x, optimizer = self.x, self.optimizer
        assert x is not None and optimizer is not None
        assert self.content_targets is not None and self.weights is not None
        x.grad = None
        total, content_loss, style_loss, tv_loss = batch_losses(
            self.vgg, x, self.content_targets, self.grams, self.weights, self.loop,
            self._regions)
        # Tensor.backward is unannotated in torch's stubs; this is the function it calls.
        torch.autograd.backward(total.sum())
        assert x.grad is not None
        if self._regions is not None:
            x.grad.mul_(self._regions.pixels())  # padding stays zero
        if isinstance(optimizer, BatchedLBFGS):
            optimizer.step(x, x.grad)  # unconstrained: the result is clamped when decoded
        else:
            optimizer.step(x, x.grad, bounds=self._bounds)
        for row in self.rows:
            row.step += 1
        due = [_due(row.options, row.step) for row in self.rows]
        if not any(report or preview for report, preview in due):
            return outcomes
        # Reading losses makes the host wait for the device: only at report steps.
        values = torch.stack([content_loss, style_loss, tv_loss, total], 1).detach().tolist()
        diverged: list[int] = []
        finished: list[int] = []
        for r, (row, (report, preview_due)) in enumerate(zip(self.rows, due, strict=True)):
            if not (report or preview_due):
                continue
            current = Losses(*values[r])
            if not math.isfinite(current.total):
                outcomes.append((row.job, FloatingPointError(
                    f"the loss diverged at step {row.step}")))
                diverged.append(r)
                continue
            row.history.append(current)
            if row.job.on_progress is not None:
                preview = None
                if preview_due:
                    preview = resize_long_side(self.space.deprocess(row.crop(x[r:r + 1])),
                                               row.options.preview_size)
                row.job.on_progress(Progress(row.step, row.options.steps, current, preview))
            if row.step >= row.options.steps:  # the last step always reports
                finished.append(r)
        if finished:
            outcomes += self._results(finished)
        if diverged or finished:
            self._drop(diverged + finished)
        return outcomes

    def _results(self, rows: list[int]) -> list[Outcome]:
        """The finished rows' images and final losses (one more forward pass, no grad)."""
        assert self.x is not None and self.content_targets is not None
        assert self.weights is not None
        index = torch.tensor(rows, device=self.device, dtype=torch.long)
        x = self.x.detach()[index]
        with torch.no_grad():
            total, content_loss, style_loss, tv_loss = batch_losses(
                self.vgg, x, self.content_targets[index],
                {k: v[index] for k, v in self.grams.items()}, self.weights[index], self.loop,
                self._regions.subset(rows) if self._regions is not None else None)
        finals = torch.stack([content_loss, style_loss, tv_loss, total], 1).tolist()
        outcomes: list[Outcome] = []
        now = time.perf_counter()
        for i, r in enumerate(rows):
            row = self.rows[r]
            image = self.space.deprocess(row.crop(x[i:i + 1]))
            if row.options.preserve_color == "luminance":
                image = keep_luminance(image, row.content)
            outcomes.append((row.job, StyleResult(image, Losses(*finals[i]), row.step,
                                                  now - row.joined, row.history)))
        return outcomes


def stylize_batch(
    vgg: VGG19Features,
    jobs: Sequence[StyleJob],
    *,
    device: torch.device,
    space: InputSpace = CAFFE,
    gram_cache: GramCache | None = None,
) -> list[StyleResult | Exception]:
    """Optimise jobs of one batch key together until each is done; returns, per job, its
    result or the exception that ended it (Cancelled when its `should_stop` said so)."""
    key = batch_key(jobs[0].options, jobs[0].content.shape)
    batch = StyleBatch(vgg, key, jobs[0].options, device=device, space=space,
                       gram_cache=gram_cache)
    outcomes: dict[int, StyleResult | Exception] = {}
    for job in jobs:
        if batch_key(job.options, job.content.shape) != key:
            raise ValueError("jobs of one batch must share output size and loop settings")
    for job in jobs:
        batch.join(job)
    while len(batch):
        for job, outcome in batch.step():
            outcomes[id(job)] = outcome
    return [outcomes.get(id(job), Cancelled()) for job in jobs]


def _due(options: StyleOptions, step: int) -> tuple[bool, bool]:
    """Whether this step reports progress, and whether it also renders a preview."""
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
