"""Style-transfer timing: per step, per job, final loss, peak memory; optionally side by side
with the textbook loop (`--baseline`), all in one process on one device.

    python bench/stylize.py --size 256 --steps 100 --baseline          # CPU here
    python bench/stylize.py --size 512 --steps 500 --baseline          # on a GPU
    python bench/stylize.py --size 512 --steps 500 --cuda-graphs on,off --optimizers lbfgs

"final loss" is the textbook loss (fp32) of each final image, so the rows compare fairly;
for a batch, the first job's image is scored and jobs/s counts all of them.
The first run on a device also pays for warm-up (cuDNN autotuning): `--warmup` steps of each
configuration run before the timed run.
On CUDA every engine configuration runs once per `--cuda-graphs` mode (default on and off):
with graphs on, a step is replayed from a CUDA graph once the batch has taken two eager steps
(ATELIER_STYLE_CUDA_GRAPHS); the flag is ignored on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.catalog import Catalog
from app.engines.style import (
    GramCache,
    StyleJob,
    StyleOptions,
    StyleResult,
    resize_long_side,
    stylize,
    stylize_batch,
)
from app.nets.loading import load_vgg
from app.nets.vgg import VGG19Features
from app.settings import Settings
from bench.textbook import reference_loss, textbook

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "images"


def load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB")))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def timed(device: torch.device, fn: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, int]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    image = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return image, seconds, peak


def _batched(vgg: VGG19Features, content: torch.Tensor, style: torch.Tensor,
             options: StyleOptions, count: int, device: torch.device,
             cuda_graphs: bool) -> torch.Tensor:
    """Runs `count` jobs (different seeds, noise-free content init) in one batch; returns the
    first image (all are scored alike)."""
    jobs = [StyleJob(content, [style], replace(options, seed=i)) for i in range(count)]
    results = stylize_batch(vgg, jobs, device=device, cuda_graphs=cuda_graphs)
    first = results[0]
    assert isinstance(first, StyleResult)
    return first.image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", type=Path, default=SHARED / "tubingen.jpg")
    parser.add_argument("--style", type=Path, default=SHARED / "starry_night.jpg")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--style-weight", type=float, default=1e3,
                        help="1e3 with no TV: the setting of shared/notes/gpu-measurements.md")
    parser.add_argument("--tv-weight", type=float, default=0.0)
    parser.add_argument("--device", default="", help="cpu, cuda:0 (default: ATELIER_DEVICES)")
    parser.add_argument("--threads", type=int, default=0, help="CPU torch threads (0: default)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="also run the textbook loop")
    parser.add_argument("--optimizers", default="lbfgs,adam")
    parser.add_argument("--batch", type=int, default=0,
                        help="also run this many jobs together (batched) and report jobs/s")
    parser.add_argument("--precisions", default="",
                        help="extra engine precisions to try, e.g. bf16 (with channels_last)")
    parser.add_argument("--cuda-graphs", default="on,off",
                        help="engine step modes to compare on CUDA: on (replayed from a CUDA "
                        "graph), off (eager), or both; ignored on the CPU")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings()
    device = torch.device(args.device or settings.device_list()[0])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    entry = Catalog(settings.catalog_dir, settings.model_dir).entry(settings.style_model)
    assert entry is not None and entry.status.value == "available", "atelier models pull"
    vgg: VGG19Features = load_vgg(entry.manifest.architecture, entry.weights, str(device))
    content = resize_long_side(load(args.content), args.size, 16)
    style = resize_long_side(load(args.style), args.size, 16)
    h, w = content.shape[:2]
    graph_modes = _graph_modes(args.cuda_graphs, device)

    def score(image: torch.Tensor) -> float:
        return reference_loss(vgg, image, content, style, device, args.style_weight,
                              args.tv_weight)

    configs: dict[str, Callable[[int], torch.Tensor]] = {}
    if args.baseline:
        configs["textbook (torch.optim.LBFGS, history 100)"] = lambda steps: textbook(
            vgg, content, style, steps, device, args.style_weight, args.tv_weight)
    base = StyleOptions(steps=args.steps, size=args.size, content_weight=1.0,
                        style_weight=args.style_weight, tv_weight=args.tv_weight,
                        progress_every=args.steps)
    variants = [(f"atelier engine ({o})", replace(base, optimizer=o))
                for o in args.optimizers.split(",")]
    # bf16 only with Adam: the engine refuses it with L-BFGS (unstable).
    variants += [(f"atelier engine (adam, {p}, channels_last)",
                  replace(base, optimizer="adam", precision=p, channels_last=True))
                 for p in filter(None, args.precisions.split(","))]

    def engine_run(options: StyleOptions, cuda_graphs: bool) -> Callable[[int], torch.Tensor]:
        def run(steps: int) -> torch.Tensor:
            return stylize(vgg, content, [style], replace(options, steps=steps),
                           device=device, cuda_graphs=cuda_graphs).image
        return run

    def batched_run(cuda_graphs: bool) -> Callable[[int], torch.Tensor]:
        def run(steps: int) -> torch.Tensor:
            return _batched(vgg, content, style, replace(base, steps=steps), args.batch,
                            device, cuda_graphs)
        return run

    for name, options in variants:
        for graphs, label in graph_modes:
            configs[name + label] = engine_run(options, graphs)
    cache = GramCache()
    first_graphs, first_label = graph_modes[0]
    configs["atelier engine (lbfgs), style targets cached" + first_label] = (
        lambda steps: stylize(vgg, content, [style], replace(base, steps=steps), device=device,
                              gram_cache=cache, cuda_graphs=first_graphs).image)
    if args.batch > 1:
        for graphs, label in graph_modes:
            configs[f"atelier engine (lbfgs), {args.batch} jobs batched" + label] = (
                batched_run(graphs))

    print(f"# {device_name(device)}; {w}x{h}, {args.steps} steps, style weight "
          f"{args.style_weight:g}, tv {args.tv_weight:g}; torch {torch.__version__}")
    print("| configuration | seconds | ms/step | steps/s | jobs/s | final loss | loss vs textbook "
          "| throughput vs textbook | peak GPU MB per job |")
    print("|---|---|---|---|---|---|---|---|---|")
    baseline: tuple[float, float] | None = None
    for name, run in configs.items():
        if args.warmup:
            run(args.warmup)
        image, seconds, peak = timed(device, functools.partial(run, args.steps))
        loss = score(image)
        if baseline is None and name.startswith("textbook"):
            baseline = (seconds, loss)
        jobs = args.batch if "batched" in name else 1
        loss_ratio = f"{loss / baseline[1]:.3f}" if baseline else "-"
        speed = f"{baseline[0] * jobs / seconds:.2f}x" if baseline else "-"
        print(f"| {name} | {seconds:.2f} | {seconds / args.steps * 1000:.1f} | "
              f"{args.steps / seconds:.1f} | {jobs / seconds:.3f} | {loss:.5g} | {loss_ratio} "
              f"| {speed} | {peak / 2**20 / jobs:.0f} |", flush=True)


def _graph_modes(spec: str, device: torch.device) -> list[tuple[bool, str]]:
    """(cuda_graphs, name suffix) of each engine step mode to run: those of `spec` on CUDA,
    one unnamed mode elsewhere (there is no graph to capture)."""
    if device.type != "cuda":
        return [(False, "")]
    modes: list[tuple[bool, str]] = []
    for word in filter(None, (w.strip() for w in spec.split(","))):
        if word not in ("on", "off"):
            raise SystemExit(f"--cuda-graphs takes on, off or on,off, not {word!r}")
        modes.append((word == "on", f", graphs {word}"))
    if not modes:
        raise SystemExit("--cuda-graphs names no mode")
    return modes


if __name__ == "__main__":
    main()
