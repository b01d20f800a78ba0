"""POST /stylize and the job resources: /jobs/{id}, /events, /result."""

from __future__ import annotations

import types
from collections.abc import AsyncIterator
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import APIRouter, Depends, Form, Header, Request, Response, UploadFile
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import Field

from app.api.conditional import immutable_response
from app.api.deps import JobDep, OwnerDep, StylizeDep
from app.api.disconnect import ClientDisconnected, unless_disconnected
from app.errors import InvalidField
from app.services.jobs import Job, JobDocument
from app.services.params import StyleParams

router = APIRouter(tags=["stylize"])

_PROBLEMS: dict[int | str, dict[str, Any]] = {
    413: {"description": "Body over `ATELIER_MAX_UPLOAD_BYTES` or image over "
                         "`ATELIER_MAX_PIXELS`."},
    415: {"description": "A file is not an image in an accepted format."},
    422: {"description": "Corrupt image or invalid option (problem+json naming the field)."},
    503: {"description": "Too many jobs, or the network is not pulled; see Retry-After."},
}


def last_event_id(
    last_event_id: Annotated[str | None, Header(description="Resume after this event id.",
                                                examples=["12"])] = None,
) -> int:
    """The event id a reconnecting client has seen; checked before the stream starts."""
    if not last_event_id:
        return 0
    try:
        after = int(last_event_id)
    except ValueError:
        raise InvalidField("Last-Event-ID", "must be an event id (an integer)") from None
    if after < 0:
        raise InvalidField("Last-Event-ID", "must not be negative")
    return after


def resume_after(job: JobDep, after: Annotated[int, Depends(last_event_id)]) -> int:
    """`Last-Event-ID`, checked against the job's events before its stream starts: an id
    past the last one sent would wait for events that come before it, and never get one."""
    if after >= job.next_event:
        raise InvalidField("Last-Event-ID", f"this job has sent events 1 to "
                           f"{job.next_event - 1}; there is no event {after} to resume after")
    return after


def _job_response(job: Job, status_code: int = 200) -> JSONResponse:
    return JSONResponse(job.document().model_dump(mode="json"), status_code=status_code,
                        headers={"Location": f"/jobs/{job.id}", "X-Job-Id": job.id})


class StylizeForm(StyleParams):
    """The multipart form of POST /stylize: the uploads and the job's parameters."""

    content: UploadFile = Field(
        description="The image to repaint (PNG, JPEG, WebP, BMP, TIFF or GIF).")
    # `format: binary` items: Swagger UI shows file pickers only for those.
    style: list[UploadFile] = Field(
        description="One or more style images.",
        json_schema_extra={"items": {"type": "string", "format": "binary"}})


def _is_list(annotation: Any) -> bool:
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_list(arg) for arg in get_args(annotation))
    return get_origin(annotation) is list


# The form's fields that may be given several times (the style images and their weights);
# the form parser keeps the last of any other given twice, silently.
_REPEATABLE = frozenset(name for name, field in StylizeForm.model_fields.items()
                        if _is_list(field.annotation))


async def _refuse_repeated_fields(request: Request) -> None:
    form = await request.form()  # parsed already for the form model: Starlette keeps it
    for name in form:
        if name not in _REPEATABLE and len(form.getlist(name)) > 1:
            raise InvalidField(name, "is given more than once; give it once")


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
    owner: OwnerDep,
    form: Annotated[StylizeForm, Form(media_type="multipart/form-data")],
    prefer: Annotated[str | None, Header(description="`respond-async` to get 202 and a job "
                                         "at once.", examples=["respond-async"])] = None,
) -> Response:
    """Gatys et al. neural style transfer on the Caffe VGG19. Synchronous by default (the
    image, when done); with `Prefer: respond-async`, 202 and a job to follow at
    `/jobs/{id}/events`. A synchronous request whose client hangs up cancels its job."""
    await _refuse_repeated_fields(request)
    job = await service.submit(
        await form.content.read(), [await s.read() for s in form.style], form, owner)
    request.state.log_fields = {"job_id": job.id, "steps": job.steps}
    if prefer and _prefers_async(prefer):
        response = _job_response(job, 202)
        response.headers["Preference-Applied"] = "respond-async"
        return response
    try:
        await unless_disconnected(request, service.store.wait(job))
    except ClientDisconnected:
        service.cancel(job)
        raise
    return await _result_response(request, service, job)


def _prefers_async(prefer: str) -> bool:
    """Whether a Prefer header (RFC 7240: `pref[=value][; param]`, comma-separated) holds
    the preference `respond-async` itself, not a word that merely contains it."""
    return any(pref.split(";")[0].split("=")[0].strip().lower() == "respond-async"
               for pref in prefer.split(","))


async def _result_response(request: Request, service: StylizeDep, job: Job) -> Response:
    image, media_type = await service.result(job)
    # A job's result never changes: its id is a strong validator.
    return immutable_response(request, image, media_type, etag=f'"{job.id}"',
                              modified=job.finished_at, headers={"X-Job-Id": job.id})


@router.get("/jobs/{job_id}", summary="A job's status", response_model=JobDocument,
            responses={404: {"description": "Unknown or expired job."}})
async def get_job(job: JobDep) -> JobDocument:
    """Status, step/steps, current losses, timestamps, ETA and error of a job."""
    return job.document()


@router.get(
    "/jobs/{job_id}/events",
    summary="Live progress as Server-Sent Events",
    response_class=EventSourceResponse,
    responses={404: {"description": "Unknown or expired job."}},
)
async def job_events(
    job: JobDep,
    service: StylizeDep,
    after: Annotated[int, Depends(resume_after)],
) -> AsyncIterator[ServerSentEvent]:
    """`progress` events (step, losses, ETA) at least every `ATELIER_PROGRESS_EVERY` steps,
    `preview` events (a small JPEG data URL) when asked for, and a final `succeeded`,
    `failed` or `canceled`. Reconnecting with `Last-Event-ID` resumes after that event."""
    async for event in service.store.follow(job, after):
        yield ServerSentEvent(data=event.data, event=event.type, id=str(event.id))


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
               206: {"description": "The byte range asked for with `Range`."},
               304: {"description": "Not modified: `If-None-Match` matched the ETag."},
               404: {"description": "Unknown or expired job."},
               409: {"description": "The job has not succeeded (yet)."},
               416: {"description": "The range lies past the end of the image."}},
)
async def job_result(request: Request, job: JobDep, service: StylizeDep) -> Response:
    """The stylized image; 409 while the job is queued or running. With its `ETag`:
    `If-None-Match` answers 304; `Range: bytes=first-last` (one range) answers 206."""
    return await _result_response(request, service, job)


@router.delete("/jobs/{job_id}", summary="Cancel a job", response_model=JobDocument,
               responses={404: {"description": "Unknown or expired job."}})
async def cancel_job(job: JobDep, service: StylizeDep) -> JobDocument:
    """A queued job is dropped; a running one stops within one step and frees its memory.
    Answers with the job once it has stopped (or after 10 s, with its current status)."""
    service.cancel(job)
    await service.store.wait(job, timeout_s=10)
    return job.document()
