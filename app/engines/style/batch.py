"""The optimisation loop: jobs of one output size painted together, one pass per step."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
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

log = logging.getLogger(__name__)

# Eager steps a batch takes after its membership changes before its step is captured in a
# CUDA graph: the first selects cuDNN's kernels for the new batch size (benchmarking waits
# for the device, which a capture forbids) and allocates, the second runs as every later
# step will.
GRAPH_WARMUP_STEPS = 2

StepLosses = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # total, c, s, tv

# torch.cuda.graph allows one capture at a time in a process; captures are rare (one per
# membership change), so workers on other devices or threads simply wait their turn.
_capture_lock = threading.Lock()
_thread_streams = threading.local()


def _side_stream() -> torch.cuda.Stream:
    """The calling thread's own stream on the current CUDA device, for warm-up and capture.

    A capture records every kernel queued on its stream, from any thread: a stream shared
    with another worker could record that worker's kernels into this batch's graph. (torch
    hands out its pooled streams round robin, 32 per device: one per thread stays distinct
    as long as the process asks for fewer.)"""
    streams: dict[int, torch.cuda.Stream] | None = getattr(_thread_streams, "streams", None)
    if streams is None:
        streams = _thread_streams.streams = {}
    device = torch.cuda.current_device()
    if device not in streams:
        streams[device] = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    return streams[device]


@contextmanager
def _on_side_stream(device: torch.device) -> Iterator[None]:
    """Run the block on this thread's side stream of `device`, after the work queued so far
    on the current stream and before the work queued there later."""
    with torch.cuda.device(device):
        stream, current = _side_stream(), torch.cuda.current_stream()
        stream.wait_stream(current)
        try:
            with torch.cuda.stream(stream):
                yield
        finally:
            current.wait_stream(stream)


class _StepGraph:
    """One step of a batch captured in a CUDA graph. A replay runs the forward and backward
    passes, the gradient mask and the optimizer step again on the same tensors, in place;
    `losses` are the capture's static outputs, which every replay overwrites."""

    def __init__(self, step: Callable[[], StepLosses], device: torch.device) -> None:
        self.device = device
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(device):
            stream = _side_stream()
            # The outer context brings the caller's stream back even when the capture fails
            # half-way (torch.cuda.graph does not restore it when capture_end raises).
            with torch.cuda.stream(stream), torch.cuda.graph(
                    # thread_local: other workers (the /generate lane) keep using the device,
                    # and synchronising, from their own threads while this one captures.
                    self.graph, stream=stream, capture_error_mode="thread_local"):
                self.losses = step()

    def replay(self) -> StepLosses:
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.losses


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

    CUDA graphs (`cuda_graphs`, CUDA only): once the membership has been the same for
    GRAPH_WARMUP_STEPS eager steps, one whole step (forward, losses, backward, gradient mask,
    optimizer step) is captured and every following step is one replay of it, so the host
    never waits for the device and launches one graph, not hundreds of kernels. The graph
    reads and writes the batch's tensors in place (pixels, targets, weights, region masks,
    optimizer state); any membership change reallocates them, so it discards the graph and
    the next steps run eagerly until it is captured again. A capture that fails leaves the
    batch eager for the rest of its life, with one warning.
    """

    def __init__(self, vgg: VGG19Features, key: tuple[object, ...], options: StyleOptions, *,
                 device: torch.device, space: InputSpace = CAFFE,
                 gram_cache: GramCache | None = None, cuda_graphs: bool = True) -> None:
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
        self._graphs = cuda_graphs and device.type == "cuda"  # nothing to capture elsewhere
        self._graph: _StepGraph | None = None
        self._eager_steps = 0  # eager steps since the membership last changed
        self.graph_captures = 0
        self.graph_replays = 0

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, job: StyleJob) -> None:
        """Add a job; it takes its first step with the batch's next one."""
        if batch_key(job.options, job.content.shape) != self.key:
            raise ValueError("a job can only join a batch of its own batch key")
        row = _prepare(self.vgg, job, self.space, self.device, self.gram_cache)
        self._membership_changed()
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

    def _membership_changed(self) -> None:
        """Forget the captured step: it points at tensors that are about to be replaced."""
        self._graph = None
        self._eager_steps = 0
        if self.x is not None:
            self.x.grad = None  # a graph's gradient lives in its memory pool: let it go

    def _drop(self, rows: Collection[int]) -> None:
        """Remove these rows, freeing their memory."""
        self._membership_changed()
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
        x = self.x
        assert x is not None
        total, content_loss, style_loss, tv_loss = self._advance()
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

    def _advance(self) -> StepLosses:
        """Take one step: a replay of the captured graph when there is one, else eagerly."""
        if self._graphs and self._graph is None and self._eager_steps >= GRAPH_WARMUP_STEPS:
            self._graph = self._capture()
        if self._graph is not None:
            self.graph_replays += 1
            return self._graph.replay()
        if not self._graphs:
            return self._compute_step()
        # Warm-up on the capture's stream (the CUDA graphs docs ask for a side stream):
        # lazily made per-stream state, such as cuBLAS workspaces, is made here and not
        # inside the graph's memory pool.
        with _on_side_stream(self.device):
            losses = self._compute_step()
        self._eager_steps += 1
        return losses

    def _capture(self) -> _StepGraph | None:
        """The step captured in a CUDA graph; None (and eager from now on) if that fails."""
        assert self.x is not None
        # The gradient is allocated inside the capture, in the graph's memory, where the
        # replays write it.
        self.x.grad = None
        try:
            with _capture_lock:
                graph = _StepGraph(self._compute_step, self.device)
        except Exception:
            log.warning("capturing a step of style batch %s in a CUDA graph failed; the batch "
                        "runs eagerly", self.key, exc_info=True)
            self._graphs = False
            if self.x is not None:
                self.x.grad = None
            return None
        self.graph_captures += 1
        return graph

    def _compute_step(self) -> StepLosses:
        """One step for every row, all of it on the device (so that it can be captured):
        losses, backward, gradient mask, optimizer step. Returns each row's losses."""
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
        return total.detach(), content_loss.detach(), style_loss.detach(), tv_loss.detach()

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
    cuda_graphs: bool = True,
) -> list[StyleResult | Exception]:
    """Optimise jobs of one batch key together until each is done; returns, per job, its
    result or the exception that ended it (Cancelled when its `should_stop` said so).
    `cuda_graphs`: replay the step from a CUDA graph while the batch does not change (CUDA
    only; see StyleBatch)."""
    key = batch_key(jobs[0].options, jobs[0].content.shape)
    batch = StyleBatch(vgg, key, jobs[0].options, device=device, space=space,
                       gram_cache=gram_cache, cuda_graphs=cuda_graphs)
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
    cuda_graphs: bool = True,
) -> StyleResult:
    """Paint `content` in the style of `styles`; returns the image and its final losses."""
    job = StyleJob(content, styles, options, on_progress, should_stop)
    (outcome,) = stylize_batch(vgg, [job], device=device, space=space, gram_cache=gram_cache,
                               cuda_graphs=cuda_graphs)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
