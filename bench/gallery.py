"""Render the README gallery: every shared content image in every shared style, defaults.

    python bench/gallery.py --images ../shared/images --size 256 --out docs/gallery

Runs the service's own engine with the options a request without fields gets (except
`--size`), writes small JPEGs and a Markdown table with the seconds each took.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.catalog import Catalog
from app.engines.style import stylize
from app.nets.loading import load_vgg
from app.services.params import StyleParams
from app.services.stylize import engine_options
from app.settings import Settings

CONTENTS = ("tubingen.jpg", "astronaut.png", "chelsea.png", "coffee.png")
STYLES = ("starry_night.jpg", "the_scream.jpg", "wave.jpg")


def load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("RGB")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, default=Path("../shared/images"))
    parser.add_argument("--out", type=Path, default=Path("docs/gallery"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--contents", default=",".join(CONTENTS),
                        help="comma-separated content files (to split the work)")
    parser.add_argument("--table", default="TABLE.md", help="name of the Markdown table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings()
    catalog = Catalog(settings.catalog_dir, settings.model_dir)
    entry = catalog.entry(settings.style_model)
    assert entry is not None, "run `atelier models pull` first"
    device = torch.device(settings.device_list()[0])
    vgg = load_vgg(entry.manifest.architecture, entry.weights, str(device))
    options = engine_options(StyleParams(size=args.size), 1, entry.manifest, Settings())
    args.out.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
               f"torch threads" if device.type == "cpu" else torch.cuda.get_device_name(device))
    rows = [f"Defaults (steps {options.steps}, style_weight {options.style_weight}, "
            f"{options.optimizer}), size {args.size}, on {device.type}: {machine}.", "",
            "| content | " + " | ".join(Path(s).stem for s in STYLES) + " |",
            "|---|" + "---|" * len(STYLES)]
    for content_name in args.contents.split(","):
        content = load(args.images / content_name)
        cells = []
        for style_name in STYLES:
            started = time.perf_counter()
            result = stylize(vgg, content, [load(args.images / style_name)], options,
                             device=device)
            seconds = time.perf_counter() - started
            name = f"{Path(content_name).stem}-{Path(style_name).stem}.jpg"
            Image.fromarray(result.image.numpy()).save(args.out / name, quality=85)
            cells.append(f"![{name}](gallery/{name})<br>{seconds:.0f} s")
            print(f"{name}: {seconds:.1f} s, loss {result.losses.total:.4g}", flush=True)
        rows.append(f"| {Path(content_name).stem} | " + " | ".join(cells) + " |")
    (args.out / args.table).write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
