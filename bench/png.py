"""PNG encoders side by side: Pillow at `compress_level=1`, the service's writer
(`app.engines.imaging.png`) with zlib's default match search, and the writer as the service
runs it (run-length strategy). Inputs: faces from the catalog's GAN (64x64, what /generate
sends most), the style results of the README gallery (docs/gallery, decoded from its
JPEGs: what /stylize sends, with JPEG's own smoothing),
and the photographs of tests/data scaled up to 512 px (small JPEGs: smooth, the run-length
strategy's worst case). Prints µs and bytes per image and the ratios to Pillow, all from
this one run.

    python bench/png.py                  # 64 faces, 12 style results, 3 photographs
    python bench/png.py --faces 256 --repeat 5
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.catalog import Catalog
from app.engines import gan
from app.engines.imaging import png
from app.nets.loading import load_gan
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def pillow(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "Pillow, compress_level=1": pillow,
    "writer, default search": lambda p: png(p, strategy=zlib.Z_DEFAULT_STRATEGY),
    "writer, run-length (service)": png,
}


def faces(count: int) -> list[np.ndarray]:
    settings = Settings()
    entry = Catalog(settings.catalog_dir, settings.model_dir).entry(settings.default_model)
    if entry is None or entry.weights is None or not entry.weights.exists():
        sys.exit(f"{settings.default_model} is not pulled: run `atelier models pull` first")
    architecture = entry.manifest.architecture
    net = load_gan(architecture, entry.weights, "cpu")
    latents = gan.latents_for_seeds(0, count, int(architecture["nz"]))
    return [image.numpy() for image in gan.sample(net, latents, torch.device("cpu"), count)]


def pictures(folder: Path, size: int | None = None) -> list[np.ndarray]:
    images = [Image.open(path).convert("RGB") for path in sorted(folder.glob("*.jpg"))]
    return [np.asarray(image.resize((size, size)) if size else image) for image in images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--size", type=int, default=512, help="side of the photographs")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes; the best counts")
    args = parser.parse_args()
    print(f"# {platform.machine()}, Python {platform.python_version()}, zlib {zlib.ZLIB_VERSION}")
    print("| images | encoder | µs per image | bytes per image | time / Pillow | size / Pillow |")
    print("|---|---|---|---|---|---|")
    gallery = pictures(ROOT / "docs" / "gallery")
    photographs = pictures(ROOT / "tests" / "data", args.size)
    side = max(max(image.shape[:2]) for image in gallery)
    for label, images in (
        (f"{args.faces} GAN faces, 64x64", faces(args.faces)),
        (f"{len(gallery)} style results, {side} px long side", gallery),
        (f"{len(photographs)} photographs scaled to {args.size}x{args.size}", photographs),
    ):
        results: dict[str, tuple[float, float]] = {}
        for name, encode in ENCODERS.items():
            best = float("inf")
            for _ in range(args.repeat):
                started = time.perf_counter()
                sizes = [len(encode(image)) for image in images]
                best = min(best, time.perf_counter() - started)
            results[name] = (best / len(images) * 1e6, sum(sizes) / len(sizes))
        base_us, base_bytes = results["Pillow, compress_level=1"]
        for name, (us, size) in results.items():
            print(f"| {label} | {name} | {us:.1f} | {size:.0f} | {us / base_us:.2f} |"
                  f" {size / base_bytes:.3f} |")


if __name__ == "__main__":
    main()
