"""POST /generate and POST /generate/interpolate."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse

from app.api.deps import (
    REQUEST_TIMEOUT_PARAMETER,
    GenerationDep,
    SettingsDep,
    TimeoutDep,
    header_of,
    header_parameter,
    timeout_of,
)
from app.api.disconnect import unless_disconnected
from app.api.negotiation import negotiate
from app.api.routing import JsonBodyRoute
from app.api.schemas import GeneratedImage, GenerateResponse
from app.engines.imaging import ImageFormat
from app.services.generation import Generated, GenerationService
from app.services.params import GenerateRequest, InterpolateRequest
from app.settings import Settings

router = APIRouter(tags=["generate"], route_class=JsonBodyRoute)

STILL_FORMATS = (ImageFormat.PNG, ImageFormat.JPEG, ImageFormat.WEBP)

_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One image, a grid of n images, or JSON with `Accept: application/json`.",
        "content": {
            "image/png": {}, "image/jpeg": {}, "image/webp": {},
            "application/json": {"schema": GenerateResponse.model_json_schema()},
        },
        "headers": {
            "X-Seed": {"description": "Seed of the first image.", "schema": {"type": "integer"}},
            "X-Model": {"description": "Model that made the images.",
                        "schema": {"type": "string"}},
        },
    },
    404: {"description": "Unknown model (problem+json)."},
    415: {"description": "The body is not sent as JSON (`Content-Type: application/json`)."},
    422: {"description": "Invalid field (problem+json naming it)."},
    503: {"description": "Queue full or model unavailable; see Retry-After."},
    504: {"description": "Deadline passed."},
}

ACCEPT_PARAMETER = header_parameter(
    "Accept", "`image/png`, `image/jpeg`, `image/webp` or `application/json`.", "image/png")


def _record(request: Request, generated: Generated, n: int) -> None:
    stats = generated.stats
    request.state.log_fields = {
        "model": generated.model,
        "n": n,
        "batch_images": stats.batch_images,
        "queue_wait_ms": round((stats.queue_wait_s or 0) * 1000, 2),
        "compute_ms": round((stats.compute_s or 0) * 1000, 2),
        "device": stats.device,
    }


@router.post(
    "/generate",
    summary="Generate images from a GAN",
    response_class=Response,
    responses=_IMAGE_RESPONSES,
    openapi_extra={"parameters": [ACCEPT_PARAMETER, REQUEST_TIMEOUT_PARAMETER]},
)
async def generate(
    request: Request,
    body: Annotated[GenerateRequest | None, Body()] = None,
) -> Response:
    """New images from a pretrained generator. The same `seed` always gives the same image,
    alone or in any batch; requests are coalesced into shared forward passes."""
    # The app's objects and the headers straight from the request: as dependencies and a
    # `Header` parameter they cost this route ~55 µs per request (bench/RESULTS.md), a
    # third of all it costs. (So a request with a bad body and a bad X-Request-Timeout
    # is refused for its body here, for its header on the other routes.)
    timeout_s = timeout_of(request)
    settings: Settings = request.app.state.settings
    service: GenerationService = request.app.state.generation
    accept = header_of(request, b"accept")
    body = body or GenerateRequest()
    requested = ImageFormat(body.format.value) if body.format else None
    fmt = negotiate(accept, requested, STILL_FORMATS)
    generated = await unless_disconnected(
        request,
        service.generate(
            model=body.model or settings.default_model, n=body.n, seed=body.seed,
            truncation=body.truncation, request_id=request.state.request_id,
            timeout_s=timeout_s,
        ),
    )
    _record(request, generated, body.n)
    headers = {"X-Seed": str(generated.seeds[0]), "X-Model": generated.model}
    if fmt is None:  # JSON: the images as data URLs
        fmt = requested or ImageFormat.PNG
        encoded = await service.encode_each(generated.images, fmt)
        payload = GenerateResponse(
            model=generated.model,
            images=[
                GeneratedImage(
                    seed=seed,
                    data_url=f"data:{fmt.media_type};base64,{base64.b64encode(data).decode()}",
                )
                for seed, data in zip(generated.seeds, encoded, strict=True)
            ],
        )
        return JSONResponse(payload.model_dump(), headers=headers)
    data = await service.encode(generated, fmt)
    return Response(data, media_type=fmt.media_type, headers=headers)


@router.post(
    "/generate/interpolate",
    summary="A latent walk between two seeds",
    response_class=Response,
    responses={
        200: {"description": "An animated WebP/GIF, or a PNG/JPEG grid of the frames.",
              "content": {"image/webp": {}, "image/gif": {}, "image/png": {},
                          "image/jpeg": {}}},
        404: {"description": "Unknown model."},
        415: {"description": "The body is not sent as JSON."},
        422: {"description": "Invalid field."},
    },
    openapi_extra={"parameters": [REQUEST_TIMEOUT_PARAMETER]},
)
async def interpolate(
    request: Request,
    body: InterpolateRequest,
    service: GenerationDep,
    settings: SettingsDep,
    timeout_s: TimeoutDep,
) -> Response:
    """Spherical interpolation between the latents of `seed_from` and `seed_to`."""
    generated = await unless_disconnected(
        request,
        service.interpolate(
            model=body.model or settings.default_model, seed_from=body.seed_from,
            seed_to=body.seed_to, steps=body.steps, truncation=body.truncation,
            request_id=request.state.request_id, timeout_s=timeout_s,
        ),
    )
    _record(request, generated, body.steps)
    fmt = ImageFormat(body.format.value)
    if fmt in (ImageFormat.WEBP, ImageFormat.GIF):
        data = await service.encode_animation(generated.images, fmt, body.frame_ms)
    else:
        data = await service.encode_grid(generated.images, fmt)
    headers = {"X-Seed": str(body.seed_from), "X-Model": generated.model}
    return Response(data, media_type=fmt.media_type, headers=headers)
