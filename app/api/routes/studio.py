"""The web studio: a single page and its assets, served from the package (no CDN), and the two
small JSON documents only the page needs: `GET /studio/config` (limits, presets, example
images, the GAN's truncation range from its manifest, this server's measured style-step
rate for time estimates, and whether API keys are on) and `GET /studio/jobs/{id}/queue` (a
queued job's place in line).

With API keys on, `/studio/config` stays public like the page (it holds no secret: a 401
would tell as much), while `/studio/jobs/` needs the key that made the job, as `/jobs/` does
(`security.PRIVATE_PREFIXES`).

Both are outside the OpenAPI schema: they serve the page and may change with it.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from app import __version__
from app.api.security import principal
from app.catalog import ModelStatus
from app.services.jobs import Job, JobStatus, JobStore
from app.settings import Settings

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"

router = APIRouter(include_in_schema=False)
assets = StaticFiles(directory=WEB_DIR)

NO_STORE = {"Cache-Control": "no-store"}

# Speed/quality presets of a style job: (id, label, size, steps, what it is for).
PRESETS = (
    ("draft", "Draft", 256, 100, "a quick look at the style"),
    ("standard", "Standard", 384, 200, "a good result"),
    ("fine", "Fine", 512, 300, "the service defaults: the most detail"),
)
# Style strengths the page's slider offers: the value shown is the value sent.
STRENGTHS = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000)
RATE_SAMPLES = 50  # most recent jobs a rate estimate uses


@router.get("/")
async def studio() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")


@functools.cache
def _examples() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((WEB_DIR / "examples" / "examples.json").read_text())
    return data


# ---- measured step rate -------------------------------------------------------------------


def _jobs(store: JobStore) -> list[Job]:
    return store.jobs()


def _samples(jobs: list[Job], now: float) -> list[tuple[str, int, float]]:
    """(optimizer, size, seconds per step) of finished jobs (compute time) and running ones
    (time since they started), most recent first."""
    samples: list[tuple[float, str, int, float]] = []
    for job in jobs:
        size = job.options.get("size")
        optimizer = str(job.options.get("optimizer", "lbfgs"))
        if not isinstance(size, int) or size <= 0:
            continue
        if job.status is JobStatus.SUCCEEDED and job.seconds and job.step:
            samples.append((job.finished_at or 0.0, optimizer, size, job.seconds / job.step))
        elif job.status is JobStatus.RUNNING and job.started_at and job.step >= 2:
            samples.append((now, optimizer, size, (now - job.started_at) / job.step))
    samples.sort(reverse=True)
    return [(o, s, t) for _, o, s, t in samples[:RATE_SAMPLES]]


def _fit(points: list[tuple[int, float]]) -> dict[str, float] | None:
    """Seconds per step as `overhead + per_px * size**2`, fitted to relative error (weighted
    least squares, both terms >= 0); one size alone: all of it per pixel."""
    if not points:
        return None
    if len({size for size, _ in points}) == 1:
        per_px = sum(t / size**2 for size, t in points) / len(points)
        return {"overhead_s": 0.0, "per_px_s": per_px}
    # Minimise sum(((a + b x) - t)^2 / t^2) with x = size^2.
    sw = swx = swxx = swt = swxt = 0.0
    for size, t in points:
        w, x = 1.0 / (t * t), float(size * size)
        sw, swx, swxx, swt, swxt = sw + w, swx + w * x, swxx + w * x * x, swt + w * t, \
            swxt + w * x * t
    det = sw * swxx - swx * swx
    a = (swxx * swt - swx * swxt) / det if det else 0.0
    b = (sw * swxt - swx * swt) / det if det else 0.0
    if a < 0 or b <= 0:  # degenerate: fall back to a pure per-pixel cost
        return {"overhead_s": 0.0,
                "per_px_s": sum(t / size**2 for size, t in points) / len(points)}
    return {"overhead_s": a, "per_px_s": b}


def step_rate(store: Any) -> dict[str, Any]:
    """The measured cost of a style step on this server, per optimizer (and pooled)."""
    samples = _samples(_jobs(store), time.time())
    rate: dict[str, Any] = {"samples": len(samples)}
    pooled = _fit([(s, t) for _, s, t in samples])
    for optimizer in ("lbfgs", "adam"):
        own = [(s, t) for o, s, t in samples if o == optimizer]
        rate[optimizer] = _fit(own) or pooled
    return rate


def _seconds(rate: dict[str, Any], optimizer: str, size: int, steps: int) -> float | None:
    fit = rate.get(optimizer)
    if not fit:
        return None
    return steps * (float(fit["overhead_s"]) + float(fit["per_px_s"]) * size * size)


# ---- the page's configuration -------------------------------------------------------------


def _gan_models(request: Request) -> list[dict[str, Any]]:
    settings = request.app.state.settings
    models = []
    for entry in request.app.state.catalog.entries():
        manifest = entry.manifest
        if manifest.kind != "gan":
            continue
        defaults = manifest.defaults
        models.append({
            "name": entry.name,
            "title": manifest.title,
            "available": entry.status is ModelStatus.AVAILABLE,
            "message": entry.message,
            "default": entry.name == settings.default_model,
            "output_size": manifest.output_size,
            "truncation": defaults.get("truncation"),
            "truncation_range": defaults.get("truncation_range"),
            "truncation_note": defaults.get("truncation_note"),
            "license": manifest.license.model_dump(),
        })
    return models


@router.get("/studio/config")
async def studio_config(request: Request) -> JSONResponse:
    """What the page shows before anything runs: limits, presets with estimates, examples."""
    settings = request.app.state.settings
    service = request.app.state.stylize
    catalog = request.app.state.catalog
    style_entry = catalog.entry(settings.style_model)
    style_defaults = style_entry.manifest.defaults if style_entry is not None else {}
    rate = step_rate(service.store)
    presets = []
    for preset_id, label, size, steps, purpose in PRESETS:
        size, steps = min(size, settings.max_size), min(steps, settings.max_steps)
        presets.append({"id": preset_id, "label": label, "size": size, "steps": steps,
                        "purpose": purpose,
                        "seconds": _seconds(rate, "lbfgs", size, steps)})
    strength = float(style_defaults.get("style_weight", 30.0))
    strengths = sorted({*STRENGTHS, strength})
    body = {
        "version": __version__,
        "limits": {
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
            "max_size": settings.max_size,
            "max_steps": settings.max_steps,
            "min_size": 16,
            "max_style_images": settings.max_style_images,
            "max_images": settings.max_images_per_request,
        },
        "stylize": {
            "model": settings.style_model,
            "available": style_entry is not None and style_entry.status is (
                ModelStatus.AVAILABLE),
            "message": style_entry.message if style_entry is not None else
            f"model {settings.style_model!r} is not in the catalog",
            "defaults": {
                "size": settings.default_size, "steps": settings.default_steps,
                "style_weight": strength,
                "content_weight": float(style_defaults.get("content_weight", 1.0)),
                "tv_weight": float(style_defaults.get("tv_weight", 1.0)),
            },
            "strengths": strengths,
            "presets": presets,
            "default_preset": "standard" if settings.on_gpu() else "draft",
            "rate": rate,
            "capacity": _capacity(request),
        },
        "generate": {"models": _gan_models(request)},
        "examples": _examples(),
        # The page shows its API key field when this is on.
        "auth": {"api_keys": settings.keys_required()},
    }
    return JSONResponse(body, headers=NO_STORE)


# ---- queue position -----------------------------------------------------------------------


def _capacity(request: Request) -> int:
    """Style jobs this server runs at once: stylize workers times their batch size."""
    settings: Settings = request.app.state.settings
    workers = sum(1 for w in request.app.state.pool.describe()
                  if w["lane"] == "stylize" and w["alive"])
    return max(1, workers) * settings.style_batch()


def _job_seconds(rate: dict[str, Any], job: Job) -> float | None:
    size = job.options.get("size")
    if not isinstance(size, int):
        return None
    per_job = _seconds(rate, str(job.options.get("optimizer", "lbfgs")), size, job.steps)
    if per_job is None:
        return None
    return per_job * (1 - job.step / job.steps) if job.steps else per_job


def _wait(rate: dict[str, Any], running: list[Job], ahead: list[Job],
          capacity: int) -> float | None:
    """Seconds until a slot is free for the job after `ahead`: each running job holds a slot
    until it ends, each job ahead takes the first slot to free up."""
    left = [j.eta_seconds if j.eta_seconds is not None else _job_seconds(rate, j)
            for j in running]
    queued = [_job_seconds(rate, j) for j in ahead]
    if any(d is None for d in left + queued):
        return None
    slots = sorted(float(d or 0.0) for d in left)[:capacity]
    slots += [0.0] * (capacity - len(slots))
    for duration in queued:
        slots.sort()
        slots[0] += float(duration or 0.0)
    return round(min(slots), 1)


@router.get("/studio/jobs/{job_id}/queue")
async def queue_position(job_id: str, request: Request) -> JSONResponse:
    """Where a job stands in the queue: its place among the queued jobs (1: next to start),
    how many run now, and an estimate of the wait from the measured step rate. With API keys
    on, only for the key that made the job (401 without a key, 404 with another)."""
    store = request.app.state.stylize.store
    job = store.get(job_id, principal(request))
    unfinished = store.unfinished()  # oldest first: the order the queue serves them
    running = [j for j in unfinished if j.status is JobStatus.RUNNING]
    queued = [j for j in unfinished if j.status is JobStatus.QUEUED]
    capacity = _capacity(request)
    body: dict[str, Any] = {"id": job.id, "status": job.status.value, "position": None,
                            "running": len(running), "capacity": capacity,
                            "wait_seconds": None}
    if job.status is JobStatus.QUEUED and job in queued:
        ahead = queued[:queued.index(job)]
        body["position"] = len(ahead) + 1
        rate = step_rate(store)
        body["wait_seconds"] = _wait(rate, running, ahead, capacity)
    return JSONResponse(body, headers=NO_STORE)
