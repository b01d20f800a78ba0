"""The optimisation loop: jobs of one output size painted together, one pass per step."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from app.engines.optim import BatchedAdam, BatchedLBFGS
from app.engines.style.cache import GramCache
from app.engines.style.colour import keep_luminance, match_color
from app.engines.style.options import Cancelled, Losses, Progress, StyleOptions, StyleResult
from app.engines.style.shapes import MIN_SIDE, batch_key, output_shape, resize_long_side
from app.engines.style.space import CAFFE, InputSpace
from app.engines.style.targets import StyleTargets, batch_losses, initial_image
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


class BatchRows:
    """The rows of a running batch: each row's image, targets and weights, and its job."""

    def __init__(self, x: torch.Tensor, content: torch.Tensor, grams: dict[str, torch.Tensor],
                 weights: torch.Tensor, optimizer: BatchedLBFGS | BatchedAdam) -> None:
        self.x = x  # [B, 3, H, W], the pixels being optimised
        self.content = content  # content-layer targets
        self.grams = grams  # Gram targets per style layer
        self.weights = weights  # [B, 3]: content, style and TV weights
        self.alive = list(range(x.shape[0]))  # job index of each row
        self._optimizer = optimizer

    def drop(self, rows: Collection[int]) -> None:
        """Remove these rows (indices into the current batch), freeing their memory."""
        kept = [r for r in range(len(self.alive)) if r not in rows]
        index = torch.tensor(kept, device=self.x.device, dtype=torch.long)
        self.x = self.x.detach()[index].requires_grad_(True)
        self.content = self.content[index]
        self.grams = {k: v[index] for k, v in self.grams.items()}
        self.weights = self.weights[index]
        self._optimizer.keep(index)
        self.alive = [self.alive[r] for r in kept]
        if self.x.device.type == "cuda":
            # Give the dropped rows' memory back to the device, not only to torch's cache.
            torch.cuda.empty_cache()


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
    batch = BatchRows(x, content_target, grams, weights, optimizer)
    outcomes: list[StyleResult | Exception | None] = [None] * len(jobs)
    histories: list[list[Losses]] = [[] for _ in jobs]

    for step in range(1, lead.steps + 1):
        stopped = [row for row, j in enumerate(batch.alive)
                   if (stop := jobs[j].should_stop) is not None and stop()]
        if stopped:
            for row in stopped:
                outcomes[batch.alive[row]] = Cancelled()
            batch.drop(stopped)
        if not batch.alive:
            break
        x = batch.x
        x.grad = None
        total, content_loss, style_loss, tv_loss = batch_losses(
            vgg, x, batch.content, batch.grams, batch.weights, lead)
        # Tensor.backward is unannotated in torch's stubs; this is the function it calls.
        torch.autograd.backward(total.sum())
        assert x.grad is not None
        if isinstance(optimizer, BatchedLBFGS):
            optimizer.step(x, x.grad)  # unconstrained: the result is clamped when decoded
        else:
            optimizer.step(x, x.grad, bounds=(low, high))
        due = [_due(jobs[j].options, step) for j in batch.alive]
        if not any(report or preview for report, preview in due):
            continue
        # Reading losses makes the host wait for the device: only at report steps.
        values = torch.stack([content_loss, style_loss, tv_loss, total], 1).detach().tolist()
        diverged: list[int] = []
        for row, (j, (report, preview_due)) in enumerate(zip(batch.alive, due, strict=True)):
            if not (report or preview_due):
                continue
            current = Losses(*values[row])
            if not math.isfinite(current.total):
                outcomes[j] = FloatingPointError(f"the loss diverged at step {step}")
                diverged.append(row)
                continue
            histories[j].append(current)
            on_progress = jobs[j].on_progress
            if on_progress is not None:
                preview = None
                if preview_due:
                    preview = resize_long_side(space.deprocess(x[row:row + 1]),
                                               jobs[j].options.preview_size)
                on_progress(Progress(step, lead.steps, current, preview))
        if diverged:
            batch.drop(diverged)
            if not batch.alive:
                break

    if batch.alive:
        with torch.no_grad():
            total, content_loss, style_loss, tv_loss = batch_losses(
                vgg, batch.x, batch.content, batch.grams, batch.weights, lead)
        finals = torch.stack([content_loss, style_loss, tv_loss, total], 1).tolist()
        seconds = time.perf_counter() - started
        for row, j in enumerate(batch.alive):
            image = space.deprocess(batch.x[row:row + 1])
            if jobs[j].options.preserve_color == "luminance":
                image = keep_luminance(image, prepared[j].content)
            assert image.shape[:2] == shape
            outcomes[j] = StyleResult(image, Losses(*finals[row]), lead.steps, seconds,
                                      histories[j])
    return [o if o is not None else Cancelled() for o in outcomes]


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
