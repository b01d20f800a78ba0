"""A benchmark of the style-transfer service, not the engine: `atelier serve` under a stream of
async jobs of mixed aspect ratios, then the same jobs through the engine in-process.

For each mode it starts a fresh `atelier serve` (free port, temporary ATELIER_JOBS_DIR, so
every mode sees a cold start and every shape's first job; `--one-server`: one for all the
modes, in order, so the later ones run warm), waits for /readyz, and posts
`POST /stylize` with `Prefer: respond-async`, following each job on `/jobs/{id}/events`:

  closed loop  N clients, each posting its next job when its last one finished
  open loop    jobs arrive at `--rate` jobs/s (Poisson or a fixed interval) whatever the
               server does; latency counts from when a job was due (no coordinated omission)

The jobs cycle through >= 6 natural shapes (4:3, 3:4, 16:9, 1:1, 2:1, 9:16 by default), each a
centred crop of a different image of ../shared/images, resized to `--upload-px`. Per mode:
jobs/s, latency (submit -> final event) p50/p95/max, time to start (submit -> the job's
`started_at`: it joined a batch) and to its first progress report (step
ATELIER_PROGRESS_EVERY), and per shape the first job against the warm ones of that shape.
Then, with the server stopped, the same jobs in-process on the same device: decoded as the
service decodes them (`decode_upload` at the job's size) and run by `stylize` one after
another, and by `stylize_batch` grouped by batch key in batches of the server's style batch
size (skipped where that is 1, as on the CPU); and the ratios service / in-process.
Exits non-zero when any job fails (a refused POST counts).

    python bench/serve_stylize.py                       # CPU default: 64 px, 20 steps, 12 jobs
    python bench/serve_stylize.py --size 512 --steps 500 --jobs 12 --concurrency 1,8 \\
        --rate 0.3 --one-server --device cuda:0         # the GPU setting (targets below)
    python bench/serve_stylize.py --size 1024 --steps 500 --jobs 2 --concurrency 1 \\
        --rate 0 --shapes 4:3 --device cuda:0           # one 1024 px job, cold then warm
    python bench/serve_stylize.py --env ATELIER_STYLE_BUCKET_PX=64 ...   # any server setting

Targets (one H100/H200, 512 px, 500 steps, mixed aspects): first job of any shape after
start-up <= 1.2x a warm job; single job <= 2.5 s; 8 concurrent clients >= 0.6 jobs/s with p95
latency <= 15 s; open loop at 0.3 jobs/s: p50 <= 4 s, p95 <= 6 s; 1024 px <= 6 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.catalog import Catalog
from app.engines.decoding import decode_upload
from app.engines.style import (
    MIN_SIDE,
    GramCache,
    Progress,
    StyleJob,
    StyleResult,
    batch_key,
    input_space,
    output_shape,
    resize_long_side,
    stylize,
    stylize_batch,
)
from app.nets.loading import load_vgg
from app.services.params import StyleParams
from app.services.stylize import engine_options
from app.settings import PROJECT_ROOT, Settings
from bench.generate import Server, cpu_seconds, free_port

IMAGES = PROJECT_ROOT.parent / "shared" / "images"
# Natural shapes (w:h) and the images they are cut from: a different content (and style)
# for neighbouring shapes, so the style Gram cache and the decoder see a real mix.
SHAPES = ("4:3", "3:4", "16:9", "1:1", "2:1", "9:16")
CONTENTS = ("tubingen.jpg", "astronaut.png", "coffee.png", "chelsea.png")
STYLES = ("starry_night.jpg", "the_scream.jpg", "wave.jpg")
FINAL_EVENTS = {"succeeded", "failed", "canceled", "interrupted"}


# ---- the jobs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class JobSpec:
    index: int
    shape: str  # the aspect ratio it was cut to, "w:h"
    natural: tuple[int, int]  # (H, W) of the output at the job's size
    content: bytes  # JPEG
    style: bytes  # JPEG
    content_name: str
    style_name: str


def ratio(label: str) -> float:
    w, _, h = label.partition(":")
    return float(w) / float(h)


def crop(image: Image.Image, aspect: float) -> Image.Image:
    """The largest centred crop of this aspect ratio (w/h)."""
    w, h = image.size
    if w / h > aspect:
        cw = round(h * aspect)
        return image.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    ch = round(w / aspect)
    return image.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))


def jpeg(image: Image.Image, long_side: int) -> bytes:
    """The image resized (never up) to this long side, as a quality-95 JPEG."""
    scale = min(1.0, long_side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)),
                              max(1, round(image.height * scale))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def shaped_upload(content_name: str, shape: str, long_side: int) -> bytes:
    """A content upload: `content_name` cut to `shape` (w:h), resized to `long_side`."""
    with Image.open(IMAGES / content_name) as image:
        return jpeg(crop(image.convert("RGB"), ratio(shape)), long_side)


def build_jobs(count: int, shapes: Sequence[str], size: int, upload_px: int) -> list[JobSpec]:
    """`count` jobs cycling through `shapes` (so each shape's first job comes early)."""
    uploads: dict[str, tuple[bytes, bytes, str, str, tuple[int, int]]] = {}
    for i, shape in enumerate(shapes):
        content_name, style_name = CONTENTS[i % len(CONTENTS)], STYLES[i % len(STYLES)]
        content = shaped_upload(content_name, shape, upload_px)
        with Image.open(IMAGES / style_name) as image:
            style = jpeg(image.convert("RGB"), upload_px)
        with Image.open(io.BytesIO(content)) as decoded:
            natural = output_shape((decoded.height, decoded.width), size)
        uploads[shape] = (content, style, content_name, style_name, natural)
    jobs = []
    for index in range(count):
        shape = shapes[index % len(shapes)]
        content, style, content_name, style_name, natural = uploads[shape]
        jobs.append(JobSpec(index, shape, natural, content, style, content_name, style_name))
    return jobs


# ---- a minimal HTTP/1.1 client (multipart POST, SSE), as bench/generate.py's -------------

async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def body_chunks(reader: asyncio.StreamReader,
                      headers: dict[str, str]) -> AsyncIterator[bytes]:
    """A response body as it arrives (chunked, sized or until the connection closes)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        yield await reader.readexactly(int(headers["content-length"]))
    else:
        while data := await reader.read(65536):
            yield data


async def request(port: int, method: str, path: str, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        for name, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            head += f"{name}: {value}\r\n"
        writer.write(head.encode() + b"\r\n" + body)
        status, response_headers = await read_head(reader)
        data = b"".join([chunk async for chunk in body_chunks(reader, response_headers)])
        return status, data
    finally:
        writer.close()


def multipart(fields: dict[str, str], files: Sequence[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = "atelier-bench-" + secrets.token_hex(8)
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f"{value}\r\n".encode() for name, value in fields.items()]
    for name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def events(port: int, job_id: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """(event type, data) of a job's SSE stream, until its final event."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Accept: text/event-stream\r\nConnection: close\r\n\r\n".encode())
        status, headers = await read_head(reader)
        if status != 200:
            raise ConnectionError(f"/jobs/{job_id}/events answered {status}")
        pending, kind, data = b"", "message", []
        async for chunk in body_chunks(reader, headers):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.rstrip(b"\r").decode()
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "event":
                        kind = value
                    elif name == "data":
                        data.append(value)
                    continue
                if data:
                    yield kind, json.loads("\n".join(data))
                    if kind in FINAL_EVENTS:
                        return
                kind, data = "message", []
    finally:
        writer.close()


# ---- one service run --------------------------------------------------------------------

def wall(iso: str | None) -> float | None:
    return datetime.fromisoformat(iso).timestamp() if iso else None


@dataclass
class Outcome:
    """One job as a client saw it; times are wall-clock seconds (time.time())."""

    index: int
    shape: str
    natural: tuple[int, int]
    submitted: float  # when it was sent (open loop: when it was due)
    status: str = "not sent"
    error: str = ""
    job_id: str = ""
    started_at: float | None = None  # the server's: the job joined a batch
    finished_at: float | None = None
    compute_s: float | None = None  # the job document's `seconds`
    first_report: float | None = None  # receipt of the first progress event with step > 0
    first_report_step: int | None = None
    done: float | None = None  # receipt of the final event (in-process: the result)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def latency(self) -> float | None:
        return None if self.done is None else self.done - self.submitted

    @property
    def to_start(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.submitted

    @property
    def to_first_report(self) -> float | None:
        return None if self.first_report is None else self.first_report - self.submitted

    @property
    def service_s(self) -> float | None:
        """started_at -> finished_at: time in a batch (shared with the batch's others)."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass
class Mode:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0  # first submission -> last final event
    ready_s: float | None = None  # server spawn -> /readyz 200
    server_cpu_s: float | None = None  # the server's CPU seconds (in-process: the bench's)

    @property
    def succeeded(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failed(self) -> int:
        return len(self.outcomes) - len(self.succeeded)

    @property
    def jobs_per_s(self) -> float:
        return len(self.succeeded) / self.seconds if self.seconds else 0.0


async def run_job(port: int, spec: JobSpec, form: dict[str, str], submitted: float,
                  timeout: float) -> Outcome:
    outcome = Outcome(spec.index, spec.shape, spec.natural, submitted)
    name = "content-" + spec.shape.replace(":", "x") + ".jpg"
    body, content_type = multipart(form, [("content", name, spec.content),
                                          ("style", spec.style_name, spec.style)])
    try:
        status, answer = await request(port, "POST", "/stylize", body, {
            "Content-Type": content_type, "Prefer": "respond-async"})
        if status != 202:
            outcome.status, outcome.error = f"http {status}", answer[:300].decode(errors="replace")
            return outcome
        outcome.job_id = json.loads(answer)["id"]
        outcome.status = "queued"
        async with asyncio.timeout(timeout):
            async for kind, data in events(port, outcome.job_id):
                now = time.time()
                if kind == "progress" and data.get("step", 0) > 0 and outcome.first_report is None:
                    outcome.first_report, outcome.first_report_step = now, int(data["step"])
                if kind in FINAL_EVENTS:
                    outcome.done, outcome.status = now, kind
                    outcome.started_at = wall(data.get("started_at"))
                    outcome.finished_at = wall(data.get("finished_at"))
                    outcome.compute_s = data.get("seconds")
                    if data.get("error"):
                        outcome.error = str(data["error"].get("detail", data["error"]))
        if outcome.done is None:
            outcome.status, outcome.error = "no final event", "the event stream ended early"
    except TimeoutError:
        outcome.status, outcome.error = "timeout", f"not finished after {timeout:.0f} s"
    except (OSError, ValueError, KeyError) as exc:
        outcome.status, outcome.error = "error", f"{type(exc).__name__}: {exc}"
    return outcome


async def closed_loop(port: int, jobs: Sequence[JobSpec], form: dict[str, str],
                      concurrency: int, timeout: float) -> list[Outcome]:
    queue = iter(jobs)
    outcomes: list[Outcome] = []

    async def client() -> None:
        for spec in queue:  # one shared iterator: each job goes to exactly one client
            outcomes.append(await run_job(port, spec, form, time.time(), timeout))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return outcomes


async def open_loop(port: int, jobs: Sequence[JobSpec], form: dict[str, str], rate: float,
                    poisson: bool, seed: int, timeout: float) -> list[Outcome]:
    rng = random.Random(seed)
    start_wall, start = time.time(), time.monotonic()
    offset, tasks = 0.0, []
    for i, spec in enumerate(jobs):
        if i:
            offset += rng.expovariate(rate) if poisson else 1.0 / rate
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        tasks.append(asyncio.ensure_future(
            run_job(port, spec, form, start_wall + offset, timeout)))
    return list(await asyncio.gather(*tasks))


class LoggedServer(Server):
    """bench/generate.py's Server, its output kept in a file (shown when something fails)."""

    def __init__(self, command: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.name, self.port, self.log = "atelier serve", port, log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=PROJECT_ROOT,
                                         stdout=out, stderr=subprocess.STDOUT)

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def served(name: str, args: argparse.Namespace, env: dict[str, str],
                 workdir: Path) -> AsyncIterator[tuple[LoggedServer, float]]:
    """A fresh `atelier serve` on a free port with its own jobs dir, once /readyz answers
    200; yields it and the seconds from spawn to ready."""
    port = free_port()
    slug = "".join(c if c.isalnum() else "-" for c in name)
    server_env = {**env, "ATELIER_PORT": str(port),
                  "ATELIER_JOBS_DIR": str(workdir / f"jobs-{slug}")}
    server = LoggedServer([sys.executable, "-m", "app.cli", "serve"], port, server_env,
                          workdir / f"server-{slug}.log")
    spawned = time.perf_counter()
    try:
        try:
            await server.wait_ready(args.ready_timeout)
        except (RuntimeError, TimeoutError):
            print(f"server for {name} did not start:\n{server.tail()}", file=sys.stderr)
            raise
        yield server, time.perf_counter() - spawned
    finally:
        server.stop()


async def drive_mode(name: str, server: LoggedServer,
                     drive: Callable[[int], Awaitable[list[Outcome]]]) -> Mode:
    mode = Mode(name)
    cpu_before = cpu_seconds(server.proc.pid)
    started = time.time()
    mode.outcomes = sorted(await drive(server.port), key=lambda o: o.index)
    ends = [o.done for o in mode.outcomes if o.done is not None]
    mode.seconds = (max(ends) if ends else time.time()) - started
    cpu_after = cpu_seconds(server.proc.pid)
    if cpu_before is not None and cpu_after is not None:
        mode.server_cpu_s = cpu_after - cpu_before
    if mode.failed:
        print(f"{mode.failed} job(s) failed in {name}; server log:\n{server.tail()}",
              file=sys.stderr)
    return mode


# ---- the same jobs in-process -----------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(data: bytes, long_side: int, settings: Settings) -> torch.Tensor:
    """As the service decodes an upload (StylizeService._decode_all)."""
    return resize_long_side(decode_upload(data, settings.max_pixels, long_side), long_side,
                            MIN_SIDE)


def in_process(args: argparse.Namespace, jobs: Sequence[JobSpec], settings: Settings,
               device: torch.device) -> list[Mode]:
    """The jobs through the engine, set up as the server's DeviceRuntime sets it up."""
    if device.type == "cpu" and settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    entry = Catalog(settings.catalog_dir, settings.model_dir).entry(settings.style_model)
    assert entry is not None and entry.status.value == "available", "atelier models pull"
    vgg = load_vgg(entry.manifest.architecture, entry.weights, str(device))
    if device.type == "cuda":  # named only now: the bench held no CUDA context until here
        print(f"\n(in-process on {torch.cuda.get_device_name(device)})")
    space = input_space(entry.manifest.architecture)
    options = engine_options(StyleParams.model_validate(params(args)), 1, entry.manifest,
                             settings)
    style_side = round(options.size * options.style_scale)
    cache = GramCache()  # the server keeps one per device
    modes: list[Mode] = []
    wanted = [m.strip() for m in args.inprocess.split(",") if m.strip()]
    if "seq" in wanted:
        mode = Mode("in-process, one after another")
        started = time.time()
        cpu_started = time.process_time()
        for spec in jobs:
            outcome = Outcome(spec.index, spec.shape, spec.natural, time.time())
            reports: list[float] = []

            def on_progress(_: Progress, reports: list[float] = reports) -> None:
                if not reports:
                    reports.append(time.time())

            try:
                content = decode(spec.content, options.size, settings)
                style = decode(spec.style, style_side, settings)
                outcome.started_at = time.time()
                result = stylize(vgg, content, [style], options, device=device,
                                 space=space, on_progress=on_progress, gram_cache=cache)
                sync(device)
                outcome.done = outcome.finished_at = time.time()
                outcome.compute_s, outcome.status = result.seconds, "succeeded"
                outcome.first_report = reports[0] if reports else None
                outcome.first_report_step = (min(options.progress_every, options.steps)
                                             if reports else None)
            except Exception as exc:
                outcome.status, outcome.error = "error", f"{type(exc).__name__}: {exc}"
            mode.outcomes.append(outcome)
        mode.seconds = time.time() - started
        mode.server_cpu_s = time.process_time() - cpu_started  # this process's
        modes.append(mode)
    batch = settings.style_batch()
    if "batch" in wanted and batch > 1:
        mode = Mode(f"in-process, stylize_batch by batch key (<= {batch} a batch)")
        started = time.time()
        cpu_started = time.process_time()
        groups: dict[tuple[object, ...], list[tuple[JobSpec, StyleJob]]] = {}
        for spec in jobs:
            content = decode(spec.content, options.size, settings)
            style = decode(spec.style, style_side, settings)
            groups.setdefault(batch_key(options, content.shape), []).append(
                (spec, StyleJob(content, [style], options)))
        for members in groups.values():
            for first in range(0, len(members), batch):
                chunk = members[first:first + batch]
                chunk_start = time.time()
                results = stylize_batch(vgg, [job for _, job in chunk], device=device,
                                        space=space, gram_cache=cache)
                sync(device)
                now = time.time()
                for (spec, _), answer in zip(chunk, results, strict=True):
                    outcome = Outcome(spec.index, spec.shape, spec.natural, chunk_start,
                                      started_at=chunk_start, finished_at=now, done=now)
                    if isinstance(answer, StyleResult):
                        outcome.status, outcome.compute_s = "succeeded", answer.seconds
                    else:
                        outcome.status, outcome.error = "error", repr(answer)
                    mode.outcomes.append(outcome)
        mode.seconds = time.time() - started
        mode.server_cpu_s = time.process_time() - cpu_started  # this process's
        mode.outcomes.sort(key=lambda o: o.index)
        modes.append(mode)
    elif "batch" in wanted:
        print(f"(in-process stylize_batch skipped: the server's style batch on {device} is 1)")
    return modes


# ---- report -----------------------------------------------------------------------------

def pct(values: Sequence[float | None], q: float) -> float:
    """Nearest-rank percentile, as bench/generate.py (with few jobs p95 is the maximum)."""
    ordered = sorted(v for v in values if v is not None)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


@dataclass
class ShapeRow:
    shape: str
    natural: tuple[int, int]
    jobs: int
    first: float | None  # latency of the shape's first job
    warm: float | None  # median latency of its later jobs
    first_service: float | None  # started -> finished
    warm_service: float | None

    @property
    def ratio(self) -> float | None:
        return self.first / self.warm if self.first and self.warm else None


def shape_rows(mode: Mode) -> list[ShapeRow]:
    rows: list[ShapeRow] = []
    for shape in dict.fromkeys(o.shape for o in mode.outcomes):
        done = [o for o in mode.outcomes if o.shape == shape and o.ok]
        if not done:
            continue
        first, rest = done[0], done[1:]
        rows.append(ShapeRow(
            shape, first.natural, len(done), first.latency,
            statistics.median(o.latency for o in rest if o.latency is not None) if rest else None,
            first.service_s,
            statistics.median(s for o in rest if (s := o.service_s) is not None)
            if rest and all(o.service_s is not None for o in rest) else None))
    return rows


def worst_first(mode: Mode) -> float | None:
    ratios = [r.ratio for r in shape_rows(mode) if r.ratio is not None]
    return max(ratios) if ratios else None


def cpu_per_job(mode: Mode) -> float | None:
    if mode.server_cpu_s is None or not mode.outcomes:
        return None
    return mode.server_cpu_s / len(mode.outcomes)


def print_mode(mode: Mode) -> None:
    done = mode.succeeded
    step = next((o.first_report_step for o in done if o.first_report_step), None)
    cpu = fmt(cpu_per_job(mode))
    print(f"\n#### {mode.name}")
    print(f"| jobs | failed | seconds | jobs/s | latency p50 / p95 / max s | to start p50 / p95 s "
          f"| to first report (step {step or '-'}) p50 / p95 s | compute s p50 "
          f"| first/warm of a shape, worst | server ready s | process CPU s/job |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    latencies = [o.latency for o in done]
    starts = [o.to_start for o in done]
    reports = [o.to_first_report for o in done]
    print(f"| {len(mode.outcomes)} | {mode.failed} | {mode.seconds:.1f} | {mode.jobs_per_s:.3f} "
          f"| {fmt(pct(latencies, 0.5))} / {fmt(pct(latencies, 0.95))} / "
          f"{fmt(pct(latencies, 1.0))} | {fmt(pct(starts, 0.5))} / {fmt(pct(starts, 0.95))} "
          f"| {fmt(pct(reports, 0.5))} / {fmt(pct(reports, 0.95))} "
          f"| {fmt(pct([o.compute_s for o in done], 0.5))} | {fmt(worst_first(mode))} "
          f"| {fmt(mode.ready_s, 1)} | {cpu} |")
    rows = shape_rows(mode)
    if rows:
        print("\n| shape | output WxH | jobs | first job latency s | warm latency s (median) "
              "| first / warm | first started->finished s | warm started->finished s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r.shape} | {r.natural[1]}x{r.natural[0]} | {r.jobs} | {fmt(r.first)} "
                  f"| {fmt(r.warm)} | {fmt(r.ratio)} | {fmt(r.first_service)} "
                  f"| {fmt(r.warm_service)} |")
    for o in mode.outcomes:
        if not o.ok:
            print(f"- job {o.index} ({o.shape}) {o.status}: {o.error}")


def summary(service: Sequence[Mode], local: Sequence[Mode], args: argparse.Namespace) -> None:
    seq = next((m for m in local if "one after another" in m.name), None)
    batched = next((m for m in local if "stylize_batch" in m.name), None)
    if local:
        print("\n#### service / in-process (same jobs, same device, this run)")
        print("| service mode | jobs/s | / in-process sequential | / in-process batched "
              "| latency p50 s | / in-process p50 | CPU s/job / in-process sequential |")
        print("|---|---|---|---|---|---|---|")
        local_p50 = pct([o.latency for o in seq.succeeded], 0.5) if seq else None
        local_cpu = cpu_per_job(seq) if seq else None
        for m in service:
            p50 = pct([o.latency for o in m.succeeded], 0.5)
            cpu = cpu_per_job(m)
            vs_seq = m.jobs_per_s / seq.jobs_per_s if seq and seq.jobs_per_s else None
            vs_batch = (m.jobs_per_s / batched.jobs_per_s if batched and batched.jobs_per_s
                        else None)
            print(f"| {m.name} | {m.jobs_per_s:.3f} | {fmt(vs_seq)} | {fmt(vs_batch)} "
                  f"| {fmt(p50)} | {fmt(p50 / local_p50 if local_p50 else None)} "
                  f"| {fmt(cpu / local_cpu if cpu is not None and local_cpu else None)} |")
        if any(m.name.startswith("open loop") for m in service):
            print("(an open loop's jobs/s is its arrival rate while the server keeps up: compare"
                  " its latency)")
    target = args.steps == 500 and args.size in (512, 1024)
    note = "" if target else " (not the target setting: the targets are for 512 px / 1024 px, " \
        "500 steps on one H100/H200)"
    print(f"\nTargets{note}:")

    checked: list[str] = []

    def check(label: str, value: float | None, limit: float, at_most: bool = True) -> None:
        checked.append(label)
        if value is None or value != value:
            print(f"- {label}: not measured in this run")
            return
        met = value <= limit if at_most else value >= limit
        verdict = ("met" if met else "NOT met") if target else "-"
        print(f"- {label}: {value:.2f} ({'<=' if at_most else '>='} {limit:g}: {verdict})")

    single = next((m for m in service if m.name.startswith("closed loop, 1 ")), None)
    if single:
        check("first job of a shape / warm job of that shape, worst shape (1 client)",
              worst_first(single), 1.2)
        warm = [r.warm for r in shape_rows(single) if r.warm is not None]
        limit = 6.0 if args.size == 1024 else 2.5
        check(f"single job at {args.size} px, warm latency median s (1 client)",
              statistics.median(warm) if warm else None, limit)
    for m in service:
        if m.name.startswith("closed loop, 8 "):
            check("8 concurrent clients, jobs/s", m.jobs_per_s, 0.6, at_most=False)
            check("8 concurrent clients, p95 latency s",
                  pct([o.latency for o in m.succeeded], 0.95), 15.0)
        if m.name.startswith("open loop, 0.3 "):
            latencies = [o.latency for o in m.succeeded]
            check("open loop 0.3 jobs/s, p50 latency s", pct(latencies, 0.5), 4.0)
            check("open loop 0.3 jobs/s, p95 latency s", pct(latencies, 0.95), 6.0)
    if not checked:
        print("- none: the targets read the modes closed loop 1 and 8 clients, open loop 0.3")


# ---- main -------------------------------------------------------------------------------

def params(args: argparse.Namespace) -> dict[str, Any]:
    return {"size": args.size, "steps": args.steps, "content_weight": args.content_weight,
            "style_weight": args.style_weight, "tv_weight": args.tv_weight,
            "optimizer": args.optimizer, "format": args.format}


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """ATELIER_* for every server: --device, --log-level and the checked --env pairs."""
    env = {"ATELIER_LOG_LEVEL": args.log_level}
    if args.device:
        env["ATELIER_DEVICES"] = args.device
    known = {f"ATELIER_{name.upper()}" for name in Settings.model_fields}
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise SystemExit(f"--env {pair!r}: not KEY=VALUE with a setting of app/settings.py"
                             f" (known: {', '.join(sorted(known))})")
        if key in ("ATELIER_PORT", "ATELIER_JOBS_DIR"):
            raise SystemExit(f"--env {key}: the bench sets it for each server")
        env[key] = value
    return env


async def run_service(args: argparse.Namespace, jobs: Sequence[JobSpec], env: dict[str, str],
                      workdir: Path) -> list[Mode]:
    form = {k: str(v) for k, v in params(args).items()}
    plan: list[tuple[str, Callable[[int], Awaitable[list[Outcome]]]]] = []
    for level in [int(c) for c in args.concurrency.split(",") if c.strip()]:
        plan.append((f"closed loop, {level} client{'s' if level > 1 else ''}",
                     functools.partial(closed_loop, jobs=jobs, form=form, concurrency=level,
                                       timeout=args.job_timeout)))
    for rate in [float(r) for r in args.rate.split(",") if r.strip() and float(r) > 0]:
        plan.append((f"open loop, {rate:g} jobs/s ({args.arrivals} arrivals)",
                     functools.partial(open_loop, jobs=jobs, form=form, rate=rate,
                                       poisson=args.arrivals == "poisson", seed=args.seed,
                                       timeout=args.job_timeout)))
    modes: list[Mode] = []
    if args.one_server:
        async with served("all modes", args, env, workdir) as (server, ready_s):
            for i, (name, drive) in enumerate(plan):
                label = name if not i else f"{name}, same server (warm)"
                modes.append(await drive_mode(label, server, drive))
                modes[-1].ready_s = None if i else ready_s
                print_mode(modes[-1])
        return modes
    for name, drive in plan:
        async with served(name, args, env, workdir) as (server, ready_s):
            modes.append(await drive_mode(name, server, drive))
            modes[-1].ready_s = ready_s
        print_mode(modes[-1])
    return modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="output long side (GPU: 512)")
    parser.add_argument("--steps", type=int, default=20, help="steps per job (GPU: 500)")
    parser.add_argument("--style-weight", type=float, default=1e3,
                        help="1e3 with no TV: the setting of shared/notes/gpu-measurements.md")
    parser.add_argument("--tv-weight", type=float, default=0.0)
    parser.add_argument("--content-weight", type=float, default=1.0)
    parser.add_argument("--optimizer", choices=["lbfgs", "adam"], default="lbfgs")
    parser.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    parser.add_argument("--jobs", type=int, default=12, help="jobs per mode")
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="aspect ratios w:h the jobs cycle through")
    parser.add_argument("--upload-px", type=int, default=0,
                        help="long side of the uploaded images (0: --size, pre-resized)")
    parser.add_argument("--concurrency", default="1,4",
                        help="closed-loop client counts, one fresh server each (GPU: 1,8)")
    parser.add_argument("--rate", default="0.5",
                        help="open-loop arrival rates in jobs/s, one fresh server each; 0: none"
                        " (GPU: 0.3)")
    parser.add_argument("--one-server", action="store_true",
                        help="run every mode on one server, in order: only the first sees a"
                        " cold start (default: a fresh server per mode)")
    parser.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson")
    parser.add_argument("--seed", type=int, default=0, help="of the Poisson arrivals")
    parser.add_argument("--device", default="",
                        help="cpu, cuda:0 (ATELIER_DEVICES of the server and the in-process"
                        " device; default: the settings' own, auto)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="a server setting (ATELIER_*), also applied in-process; repeatable")
    parser.add_argument("--inprocess", default="seq,batch",
                        help="in-process runs after the service: seq, batch (empty: none)")
    parser.add_argument("--log-level", default="WARNING", help="ATELIER_LOG_LEVEL of the server")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--job-timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path, help="also write every job's times here")
    args = parser.parse_args()

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    env = server_env(args)
    os.environ.update({k: v for k, v in env.items() if k != "ATELIER_LOG_LEVEL"})
    settings = Settings()  # as the servers see it (the same ATELIER_* environment)
    device = torch.device(args.device or settings.device_list()[0])
    jobs = build_jobs(args.jobs, shapes, args.size, args.upload_px or args.size)
    described = ", ".join(dict.fromkeys(
        f"{j.shape} {j.natural[1]}x{j.natural[0]}" for j in jobs))
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, {device}; "
          f"torch {torch.__version__}; {args.size} px, {args.steps} steps, {args.optimizer}, "
          f"style weight {args.style_weight:g}, tv {args.tv_weight:g}; {args.jobs} jobs per"
          f" mode over {len(shapes)} shapes ({described}); uploads {args.upload_px or args.size}"
          f" px JPEG; server env: {' '.join(f'{k}={v}' for k, v in env.items())}; load"
          f" average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="atelier-serve-bench-") as tmp:
        service = asyncio.run(run_service(args, jobs, env, Path(tmp)))
    local: list[Mode] = []
    broken = False
    if args.inprocess.strip():
        try:
            local = in_process(args, jobs, settings, device)
        except Exception as exc:  # reported; the service's tables are printed already
            print(f"\nthe in-process run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            broken = True
    for mode in local:
        print_mode(mode)
    summary(service, local, args)
    print(f"(load average at the end: {os.getloadavg()[0]:.2f})")
    if args.json:
        args.json.write_text(json.dumps([
            {"mode": m.name, "seconds": m.seconds, "jobs_per_s": m.jobs_per_s,
             "ready_s": m.ready_s, "server_cpu_s": m.server_cpu_s,
             "jobs": [asdict(o) for o in m.outcomes]}
            for m in [*service, *local]], indent=2))
    failed = sum(m.failed for m in [*service, *local])
    if failed:
        print(f"\n{failed} job(s) failed", file=sys.stderr)
    if failed or broken:
        sys.exit(1)


if __name__ == "__main__":
    main()
