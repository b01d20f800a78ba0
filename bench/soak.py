"""Memory over a long mixed load: does the server's resident memory level off?

Starts `atelier serve` (the real service, default settings but quiet logs) and drives it
with a few clients, each repeating one round of everything a user or an attacker sends:
/generate (n 1, 4 and 16; PNG, JPEG, WebP and JSON), /generate/interpolate, small
synchronous /stylize jobs (one with a `--large`-pixel JPEG style image, decoded and scaled
down: what a phone photo costs), invalid fields, a body sent as a form, and a decompression
bomb (a 41-megapixel PNG header, refused before it is decoded). Every `--every` seconds it
reads the server's RSS from /proc and prints a row. At the end it prints the growth over the
second half of the run, in MB per minute and per 1,000 requests: a leak keeps growing there,
while caches and allocator pools level off after the first rounds.

    python bench/soak.py --minutes 5              # on the CPU: tiny style jobs
    python bench/soak.py --minutes 20 --clients 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generate import ROOT, Server, free_port
from tests.hostile import png as png_header

DATA = ROOT / "tests" / "data"
JSON = {"content-type": "application/json"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def large_jpeg(side: int) -> bytes:
    """A side x side JPEG photo-sized in pixels, small in bytes (a smooth gradient)."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (side, 1)),
                       np.tile(ramp[:, None], (1, side))], axis=2).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def one_round(client: httpx.AsyncClient, seed: int, size: int, steps: int,
              large: bytes) -> list[Callable[[], Awaitable[httpx.Response]]]:
    """The requests of one round, each a call that sends it."""
    content, style = (DATA / "content.jpg").read_bytes(), (DATA / "starry.jpg").read_bytes()
    bomb = png_header(6400, 6400, rows=2)  # 41 Mpx promised: over ATELIER_MAX_PIXELS (40 M)

    def generate(body: dict[str, object], accept: str = "image/png"
                 ) -> Callable[[], Awaitable[httpx.Response]]:
        return lambda: client.post("/generate", json=body, headers={"accept": accept})

    def stylize(files: dict[str, tuple[str, bytes]]) -> Callable[[], Awaitable[httpx.Response]]:
        return lambda: client.post("/stylize", files=files,
                                   data={"size": str(size), "steps": str(steps)})

    return [
        generate({"seed": seed}),
        generate({"seed": seed, "n": 4, "format": "jpeg"}, "image/jpeg"),
        generate({"n": 16, "truncation": 0.8}, "image/webp"),
        generate({"n": 4}, "application/json"),
        lambda: client.post("/generate/interpolate", headers=JSON,
                            content=json.dumps({"seed_from": seed, "seed_to": seed + 1,
                                                "steps": 8, "format": "webp"})),
        stylize({"content": ("c.jpg", content), "style": ("s.jpg", style)}),
        stylize({"content": ("c.jpg", content), "style": ("large.jpg", large)}),
        stylize({"content": ("bomb.png", bomb), "style": ("s.jpg", style)}),
        generate({"n": 0}),
        lambda: client.post("/generate", content=b'{"n": 2}',
                            headers={"content-type": "application/x-www-form-urlencoded"}),
    ]


async def drive(port: int, clients: int, seconds: float, size: int, steps: int,
                large: bytes, statuses: Counter[int], progress: list[int]) -> None:
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients)

    async def user(number: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                                     limits=limits) as client:
            seed = number * 1_000_000
            while time.monotonic() < deadline:
                for send in one_round(client, seed, size, steps, large):
                    response = await send()
                    statuses[response.status_code] += 1
                    progress[0] += 1
                seed += 1

    await asyncio.gather(*(user(n) for n in range(clients)))


async def soak(args: argparse.Namespace) -> None:
    port = free_port()
    server = Server("service", [sys.executable, "-m", "app.cli", "serve"], port,
                    {"ATELIER_PORT": str(port), "ATELIER_LOG_LEVEL": "WARNING"})
    try:
        await server.wait_ready()
        pid = server.proc.pid
        statuses: Counter[int] = Counter()
        progress = [0]
        print(f"# {platform.machine()}, Python {platform.python_version()}; {args.clients}"
              f" clients for {args.minutes:g} min, style jobs {args.size} px / {args.steps}"
              f" steps, large style image {args.large}x{args.large}")
        print("| minute | requests | RSS MB |")
        print("|---|---|---|")
        samples: list[tuple[float, int, float]] = [(0.0, 0, rss_mb(pid))]
        print(f"| 0.0 | 0 | {samples[0][2]:.0f} |")
        started = time.monotonic()
        load = asyncio.create_task(drive(port, args.clients, args.minutes * 60, args.size,
                                         args.steps, large_jpeg(args.large), statuses,
                                         progress))
        while not load.done():
            await asyncio.wait({load}, timeout=args.every)
            minute = (time.monotonic() - started) / 60
            samples.append((minute, progress[0], rss_mb(pid)))
            print(f"| {minute:.1f} | {progress[0]} | {samples[-1][2]:.0f} |", flush=True)
        await load
        # From the sample nearest the run's middle to the last one.
        middle = min(samples, key=lambda sample: abs(sample[0] - samples[-1][0] / 2))
        (m0, r0, mb0), (m1, r1, mb1) = middle, samples[-1]
        print(f"statuses: {dict(sorted(statuses.items()))}")
        print(f"RSS: {samples[0][2]:.0f} MB at start, {max(s[2] for s in samples):.0f} MB at"
              f" most, {mb1:.0f} MB at the end")
        print(f"second half ({m0:.1f}-{m1:.1f} min, {r1 - r0} requests): {mb1 - mb0:+.1f} MB,"
              f" {(mb1 - mb0) / max(m1 - m0, 1e-9):+.2f} MB/min,"
              f" {(mb1 - mb0) / max(r1 - r0, 1) * 1000:+.2f} MB per 1,000 requests")
        if statuses.get(500) or statuses.get(502) or statuses.get(504):
            print("5xx answers: see the server")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--every", type=float, default=20, help="seconds between samples")
    parser.add_argument("--size", type=int, default=64, help="style jobs' size")
    parser.add_argument("--steps", type=int, default=3, help="style jobs' steps")
    parser.add_argument("--large", type=int, default=4000,
                        help="side of the large JPEG style image (pixels)")
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
