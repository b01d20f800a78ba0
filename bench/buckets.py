"""The quality cost of shape buckets, scored by the textbook referee.

For several content/style pairs of ../shared/images, each at an aspect ratio that a bucket
pads, the engine runs once at the natural shape (`bucket_px=0`) and once padded to its
bucket and cropped back; `bench/textbook.py:reference_loss` scores both final images on
the natural shape, in fp32. L-BFGS trajectories part ways on rounding alone, so each pair
also runs unbucketed with another intra-op thread count: the ratio of those two runs is
the noise floor a bucket ratio has to be read against. Prints one table and the worst
ratios (target: within 2%).

    python bench/buckets.py --size 128 --bucket 16 --steps 100        # CPU
    python bench/buckets.py --size 512 --bucket 64 --steps 500        # the GPU setting
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.catalog import Catalog
from app.engines.style import (
    MIN_SIDE,
    StyleOptions,
    compute_shape,
    output_shape,
    resize_long_side,
    stylize,
)
from app.nets.loading import load_vgg
from app.settings import PROJECT_ROOT, Settings
from bench.textbook import reference_loss

IMAGES = PROJECT_ROOT.parent / "shared" / "images"
# (content, style, aspect ratio w:h of the crop): ratios that a bucket has to pad.
PAIRS = [("tubingen.jpg", "starry_night.jpg", 1.45), ("chelsea.png", "the_scream.jpg", 1.21),
         ("astronaut.png", "wave.jpg", 0.83), ("coffee.png", "starry_night.jpg", 1.62)]


def load(name: str, ratio: float) -> torch.Tensor:
    """The largest centred crop of this aspect ratio (w/h), uint8 [H, W, 3]."""
    image = np.array(Image.open(IMAGES / name).convert("RGB"))
    h, w = image.shape[:2]
    if w / h > ratio:
        cw = round(h * ratio)
        image = image[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = round(w / ratio)
        image = image[(h - ch) // 2:(h - ch) // 2 + ch]
    return torch.from_numpy(np.ascontiguousarray(image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bucket", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--style-weight", type=float, default=1e3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    args = parser.parse_args()
    settings = Settings()
    device = torch.device(args.device or settings.device_list()[0])
    entry = Catalog(settings.catalog_dir, settings.model_dir).entry(settings.style_model)
    assert entry is not None and entry.status.value == "available", "atelier models pull"
    vgg = load_vgg(entry.manifest.architecture, entry.weights, str(device))
    base = StyleOptions(steps=args.steps, size=args.size, content_weight=1.0,
                        style_weight=args.style_weight, tv_weight=0.0,
                        progress_every=args.steps, optimizer=args.optimizer)
    print(f"# {platform.node()} {device}; size {args.size}, bucket {args.bucket} px, "
          f"{args.steps} steps, {args.optimizer}, style weight {args.style_weight:g}, tv 0; "
          f"torch {torch.__version__}")
    print("| content | style | natural | bucket | padded % | natural loss | bucketed loss "
          "| bucketed / natural | noise floor (2 threads / 1) | seconds natural / bucketed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ratios, floors = [], []
    for content_name, style_name, ratio in PAIRS:
        content = load(content_name, ratio)
        style = np.array(Image.open(IMAGES / style_name).convert("RGB"))
        style_image = torch.from_numpy(np.ascontiguousarray(style))
        natural = output_shape(content.shape, args.size)
        bucket = compute_shape(natural, args.bucket)
        scores, seconds = [], []
        for bucket_px, threads in ((0, 1), (args.bucket, 1), (0, 2)):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            result = stylize(vgg, content, [style_image], replace(base, bucket_px=bucket_px),
                             device=device)
            seconds.append(time.perf_counter() - started)
            assert result.image.shape[:2] == natural
            scores.append(reference_loss(
                vgg, result.image, resize_long_side(content, args.size, MIN_SIDE),
                resize_long_side(style_image, args.size, MIN_SIDE), device,
                args.style_weight, 0.0))
        padded = 100 * (bucket[0] * bucket[1] / (natural[0] * natural[1]) - 1)
        ratios.append(scores[1] / scores[0])
        floors.append(scores[2] / scores[0])
        print(f"| {content_name} | {style_name} | {natural[1]}x{natural[0]} "
              f"| {bucket[1]}x{bucket[0]} | {padded:.1f} | {scores[0]:.4g} | {scores[1]:.4g} "
              f"| {ratios[-1]:.3f} | {floors[-1]:.3f} | {seconds[0]:.1f} / {seconds[1]:.1f} |")
    worst = max(ratios, key=lambda r: abs(r - 1))
    floor = max(floors, key=lambda r: abs(r - 1))
    mean = sum(ratios) / len(ratios)
    print(f"\nbucketed/natural loss: worst {worst:.3f}, mean {mean:.3f}; rounding noise floor:"
          f" worst {floor:.3f} (target: within 2%,"
          f" {'met' if abs(worst - 1) <= 0.02 else 'NOT met'})")


if __name__ == "__main__":
    main()
