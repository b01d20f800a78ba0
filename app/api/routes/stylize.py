"""POST /stylize and the job resources: /jobs/{id}, /events, /result."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile
from fastapi.responses import FileResponse, JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app.api.deps import SettingsDep, StylizeDep
from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.api.problems import Problem, invalid_field, problem_type
from app.api.schemas import JobDocument
from app.engines.imaging import ImageFormat
from app.services.jobs import Job, JobStatus
from app.services.stylize import StyleRequest

router = APIRouter(tags=["stylize"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    413: {"description": "Body over `ATELIER_MAX_UPLOAD_BYTES` or image over "
                         "`ATELIER_MAX_PIXELS`."},
    415: {"description": "A file is not an image in an accepted format."},
    422: {"description": "Corrupt image or invalid option (problem+json naming the field)."},
    503: {"description": "Too many jobs, or the network is not pulled; see Retry-After."},
}


def _blend(values: list[str] | None) -> tuple[float, ...] | None:
    if not values:
        return None
    try:
        weights = tuple(float(v) for value in values for v in value.split(",") if v.strip())
    except ValueError:
        raise invalid_field("style_blend", "must be numbers, e.g. 0.7,0.3") from None
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise invalid_field("style_blend", "weights must be >= 0 with a positive sum")
    return weights


def _job_response(job: Job, status_code: int = 200) -> JSONResponse:
    return JSONResponse(job.document(), status_code=status_code,
                        headers={"Location": f"/jobs/{job.id}"})


@router.post(
    "/stylize",
    summary="Paint a content image in the style of one or more style images",
    response_class=Response,
    status_code=200,
    responses={
        200: {"description": "The stylized image (synchronous); `X-Job-Id` names the job.",
              "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        202: {"description": "With `Prefer: respond-async`: the job, at `Location`.",
              "model": JobDocument},
        **_PROBLEMS,
    },
)
async def stylize(
    request: Request,
    service: StylizeDep,
    settings: SettingsDep,
    content: Annotated[UploadFile, File(description="The image to repaint (PNG, JPEG, WebP, "
                                        "BMP, TIFF or GIF).")],
    style: Annotated[list[UploadFile], File(description="One or more style images.")],
    steps: Annotated[int | None, Form(description="Optimisation steps (default 300).",
                                      examples=[300])] = None,
    size: Annotated[int | None, Form(description="Long side of the output in pixels "
                                     "(default 512, at most `ATELIER_MAX_SIZE`).",
                                     examples=[512])] = None,
    content_weight: Annotated[float | None, Form(ge=0, description="Weight of the content "
                                                 "loss (model default when omitted).",
                                                 examples=[1.0])] = None,
    style_weight: Annotated[float | None, Form(ge=0, description="Weight of the style loss:"
                                               " higher paints more strongly.",
                                               examples=[30.0])] = None,
    tv_weight: Annotated[float | None, Form(ge=0, description="Total-variation weight "
                                            "(smoothness).", examples=[1.0])] = None,
    optimizer: Annotated[Literal["lbfgs", "adam"], Form(description="`lbfgs` (better per "
                                                        "step) or `adam`.",
                                                        examples=["lbfgs"])] = "lbfgs",
    init: Annotated[Literal["content", "noise", "random"], Form(
        description="Start from the content, the content plus noise, or noise.",
        examples=["content"])] = "content",
    style_scale: Annotated[float, Form(gt=0, le=4, description="Style image size relative "
                                       "to the output.", examples=[1.0])] = 1.0,
    style_blend: Annotated[list[str] | None, Form(description="One weight per style image "
                                                  "(repeat the field or comma-separate).",
                                                  examples=["0.7,0.3"])] = None,
    preserve_color: Annotated[Literal["none", "luminance", "match"], Form(
        description="`luminance`: keep the content's colours (YCbCr) after the run; "
                    "`match`: recolour the style to the content's palette before it.",
        examples=["luminance"])] = "none",
    seed: Annotated[int | None, Form(ge=0, le=2**32 - 1, description="Seed of the noise "
                                     "initialisations (results are deterministic on CPU).",
                                     examples=[0])] = None,
    format: Annotated[Literal["png", "jpeg", "webp"], Form(description="Output format.",
                                                           examples=["png"])] = "png",
    preview_every: Annotated[int, Form(ge=0, description="Steps between `preview` SSE "
                                       "events (0: none).", examples=[25])] = 0,
    prefer: Annotated[str | None, Header(description="`respond-async` to get 202 and a job "
                                         "at once.", examples=["respond-async"])] = None,
) -> Response:
    """Gatys et al. neural style transfer on the Caffe VGG19. Synchronous by default (the
    image, when done); with `Prefer: respond-async`, 202 and a job to follow at
    `/jobs/{id}/events`. A synchronous request whose client hangs up cancels its job."""
    if steps is not None and not 1 <= steps <= settings.max_steps:
        raise invalid_field("steps", f"must be between 1 and {settings.max_steps}")
    if size is not None and not 16 <= size <= settings.max_size:
        raise invalid_field("size", f"must be between 16 and {settings.max_size}")
    if len(style) > settings.max_style_images:
        raise invalid_field("style", f"at most {settings.max_style_images} style images")
    blend = _blend(style_blend)
    if blend is not None and len(blend) != len(style):
        raise invalid_field("style_blend", f"{len(blend)} weights for {len(style)} styles")
    if preview_every > (steps or settings.default_steps):
        raise invalid_field("preview_every", "must not exceed steps")
    options = StyleRequest(
        steps=steps, size=size, content_weight=content_weight, style_weight=style_weight,
        tv_weight=tv_weight, optimizer=optimizer, init=init, style_scale=style_scale,
        style_blend=blend, preserve_color=preserve_color, seed=seed,
        format=ImageFormat(format), preview_every=preview_every,
    )
    job = await service.submit(
        await content.read(), [await s.read() for s in style], options
    )
    request.state.log_fields = {"job_id": job.id, "steps": job.steps}
    if prefer and "respond-async" in prefer.lower():
        response = _job_response(job, 202)
        response.headers["Preference-Applied"] = "respond-async"
        response.headers["X-Job-Id"] = job.id
        return response
    try:
        await unless_disconnected(request, service.store.wait(job))
    except ClientDisconnected:
        service.cancel(job)
        raise
    return _result_response(job)


def _lookup(service: StylizeDep, job_id: str) -> Job:
    job = service.store.get(job_id)
    if job is None:
        raise Problem(404, "Unknown job", f"no job {job_id!r} (it may have expired)",
                      type_=problem_type("unknown-job"))
    return job


def _result_response(job: Job) -> Response:
    if job.status is JobStatus.SUCCEEDED and job.result_path is not None:
        return FileResponse(job.result_path, media_type=job.media_type,
                            headers={"X-Job-Id": job.id})
    if job.status is JobStatus.FAILED and job.error:
        raise Problem(int(job.error.get("status", 500)), str(job.error.get("title")),
                      str(job.error.get("detail")), type_=problem_type("job-failed"),
                      headers={"X-Job-Id": job.id}, job=job.document())
    raise Problem(409, "No result", f"job {job.id} is {job.status.value}",
                  type_=problem_type("job-not-finished"), headers={"X-Job-Id": job.id},
                  job_status=job.status.value)


@router.get("/jobs/{job_id}", summary="A job's status", response_model=JobDocument,
            responses={404: {"description": "Unknown or expired job."}})
async def get_job(job_id: str, service: StylizeDep) -> JSONResponse:
    """Status, step/steps, current losses, timestamps, ETA and error of a job."""
    return _job_response(_lookup(service, job_id))


@router.get(
    "/jobs/{job_id}/events",
    summary="Live progress as Server-Sent Events",
    response_class=EventSourceResponse,
    responses={404: {"description": "Unknown or expired job."}},
)
async def job_events(
    job_id: str,
    service: StylizeDep,
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.",
                                                examples=["12"])] = None,
) -> AsyncIterator[ServerSentEvent]:
    """`progress` events (step, losses, ETA) at least every `ATELIER_PROGRESS_EVERY` steps,
    `preview` events (a small JPEG data URL) when asked for, and a final `succeeded`,
    `failed` or `canceled`. Reconnecting with `Last-Event-ID` resumes after that event."""
    job = _lookup(service, job_id)
    try:
        after = int(last_event_id) if last_event_id else 0
    except ValueError:
        raise invalid_field("Last-Event-ID", "must be an event id (an integer)") from None
    async for event in service.store.follow(job, after):
        if event is None:
            yield ServerSentEvent(comment="keep-alive")
        else:
            yield ServerSentEvent(data=event.data, event=event.type, id=str(event.id))


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
               404: {"description": "Unknown or expired job."},
               409: {"description": "The job has not succeeded (yet)."}},
)
async def job_result(job_id: str, service: StylizeDep) -> Response:
    """The stylized image; 409 while the job is queued or running."""
    return _result_response(_lookup(service, job_id))


@router.delete("/jobs/{job_id}", summary="Cancel a job", response_model=JobDocument,
               responses={404: {"description": "Unknown or expired job."}})
async def cancel_job(job_id: str, service: StylizeDep) -> JSONResponse:
    """A queued job is dropped; a running one stops within one step and frees its memory.
    Answers with the job once it has stopped (or after 10 s, with its current status)."""
    job = _lookup(service, job_id)
    service.cancel(job)
    await service.store.wait(job, timeout_s=10)
    return _job_response(job)
