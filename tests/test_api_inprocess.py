"""The whole app in-process (ASGITransport + lifespan) on a scripted runtime: validation,
negotiation, problems, jobs and their event streams, and faults of the work (not of the
wire: those boot real servers in test_api_faults.py and test_stylize_api.py)."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import pytest
from PIL import Image

from app.pool import WorkItem
from app.runtime import GenerateWork, StylizeWork
from tests.conftest import make_settings
from tests.inprocess import DATA, PROBLEM, InProcess, StubRuntime, in_process, upload
from tests.sse import StreamRefused, aread_events, astream

pytestmark = pytest.mark.anyio

ASYNC = {"prefer": "respond-async"}
JSON = {"accept": "application/json"}

SETTINGS: dict[str, Any] = {
    "default_size": 32, "default_steps": 4, "max_steps": 50, "progress_every": 1,
    "max_upload_bytes": 200_000, "max_pixels": 250_000, "shutdown_grace_s": 1,
    "queue_size": 4, "retry_after_s": 3,
}


@pytest.fixture(scope="module")
async def shared() -> AsyncIterator[InProcess]:
    """One app for the tests that change nothing in it."""
    async with in_process(make_settings(**SETTINGS)) as app:
        yield app


@pytest.fixture
async def fresh() -> AsyncIterator[InProcess]:
    """An app of the test's own, for tests that script its runtime."""
    async with in_process(make_settings(**SETTINGS), raise_app_exceptions=False) as app:
        yield app


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status and problem["title"]
    assert problem["type"].startswith("urn:atelier:problem:")
    assert problem["instance"] == response.request.url.path
    assert problem["request_id"] == response.headers["x-request-id"]
    return problem


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """`wait_until` for async tests: the event loop (the app's) runs while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def fields(problem: dict[str, Any]) -> list[str]:
    return [e["field"] for e in problem.get("errors", [])]


# ---- /generate: validation, negotiation, protocol errors ---------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/generate", {"n": 0}, "n"),
        ("/generate", {"n": 65}, "n"),
        ("/generate", {"seed": -1}, "seed"),
        ("/generate", {"truncation": 0}, "truncation"),
        ("/generate", {"format": "bmp"}, "format"),
        ("/generate", {"colour": "red"}, "colour"),
        ("/generate/interpolate", {"seed_from": 1, "seed_to": 2, "steps": 1}, "steps"),
        ("/generate/interpolate", {"seed_to": 2}, "seed_from"),
    ],
)
async def test_invalid_fields_are_named_in_a_422_problem(
    shared: InProcess, path: str, body: dict[str, object], field: str
) -> None:
    problem = assert_problem(await shared.client.post(path, json=body), 422)
    assert problem["type"] == "urn:atelier:problem:validation"
    assert field in fields(problem)
    assert field in problem["detail"]


async def test_malformed_json_and_bad_timeout_header_are_422(shared: InProcess) -> None:
    broken = await shared.client.post("/generate", content=b"{nope",
                                      headers={"content-type": "application/json"})
    timeout = await shared.client.post("/generate", json={},
                                       headers={"x-request-timeout": "soon"})
    too_long = await shared.client.post("/generate", json={},
                                        headers={"x-request-timeout": "100000"})
    assert_problem(broken, 422)
    assert fields(assert_problem(timeout, 422)) == ["X-Request-Timeout"]
    assert fields(assert_problem(too_long, 422)) == ["X-Request-Timeout"]


async def test_n_is_bounded_by_the_servers_setting_in_messages_and_docs(
    shared: InProcess,
) -> None:
    limit = shared.app.state.settings.max_images_per_request
    for n in (limit + 1, 1025, 10**12):
        problem = assert_problem(await shared.client.post("/generate", json={"n": n}), 422)
        assert fields(problem) == ["n"]
        assert problem["detail"] == f"n: must be <= {limit}"
    schema = (await shared.client.get("/openapi.json")).json()
    n = schema["components"]["schemas"]["GenerateRequest"]["properties"]["n"]
    assert (n["minimum"], n["maximum"]) == (1, limit)


@pytest.mark.parametrize("path", ["/generate", "/generate/interpolate"])
async def test_a_json_body_sent_as_a_form_is_a_415(shared: InProcess, path: str) -> None:
    # What `curl -d '{"n": 2}'` sends without `-H 'content-type: application/json'`.
    refused = await shared.client.post(
        path, content=b'{"seed_from": 1, "seed_to": 2, "n": 2}',
        headers={"content-type": "application/x-www-form-urlencoded"})
    problem = assert_problem(refused, 415)
    assert problem["type"] == "urn:atelier:problem:unsupported-media-type"
    assert "application/json" in problem["detail"]
    assert refused.headers["accept-post"] == "application/json"
    # Without a body there is nothing to misread: the defaults apply.
    assert (await shared.client.post("/generate")).status_code == 200


async def test_unknown_model_route_and_method_are_problems(shared: InProcess) -> None:
    model = await shared.client.post("/generate", json={"model": "stylegan-9000"})
    wrong_kind = await shared.client.post("/generate", json={"model": "vgg19-caffe"})
    route = await shared.client.get("/nowhere")
    method = await shared.client.get("/generate")
    problem = assert_problem(model, 404)
    assert problem["type"] == "urn:atelier:problem:unknown-model"
    assert "dcgan-faces-64" in problem["detail"]
    assert fields(assert_problem(wrong_kind, 422)) == ["model"]
    assert assert_problem(route, 404)["type"] == "urn:atelier:problem:not-found"
    assert assert_problem(method, 405)["type"] == "urn:atelier:problem:method-not-allowed"
    assert method.headers["allow"] == "POST"


async def test_unacceptable_accept_is_a_406_listing_the_offered_types(shared: InProcess
                                                                     ) -> None:
    response = await shared.client.post("/generate", json={}, headers={"accept": "text/html"})
    problem = assert_problem(response, 406)
    assert "image/png, image/jpeg, image/webp, application/json" in problem["detail"]
    asked_webp = await shared.client.post("/generate", json={"format": "webp"},
                                          headers={"accept": "image/png"})
    assert "image/webp, application/json" in assert_problem(asked_webp, 406)["detail"]


@pytest.mark.parametrize(
    ("body", "accept", "media_type"),
    [
        ({}, None, "image/png"),
        ({"format": "jpeg"}, None, "image/jpeg"),
        ({}, "image/webp", "image/webp"),
        ({}, "image/jpeg;q=0.5, image/png;q=0.9", "image/png"),
        ({}, "image/*;q=0.9, image/png;q=0.1", "image/jpeg"),
        ({"format": "webp"}, "*/*", "image/webp"),
    ],
)
async def test_the_format_comes_from_the_body_or_accept(
    shared: InProcess, body: dict[str, str], accept: str | None, media_type: str
) -> None:
    headers = {"accept": accept} if accept else {}
    response = await shared.client.post("/generate", json={"seed": 1, **body},
                                        headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert Image.open(io.BytesIO(response.content)).get_format_mimetype() == media_type


async def test_json_lists_each_image_with_its_seed(shared: InProcess) -> None:
    response = await shared.client.post("/generate", json={"seed": 10, "n": 3,
                                                           "format": "webp"}, headers=JSON)
    assert response.status_code == 200 and response.headers["content-type"] == (
        "application/json")
    assert response.headers["x-seed"] == "10"
    body = response.json()
    assert [i["seed"] for i in body["images"]] == [10, 11, 12]
    assert all(i["data_url"].startswith("data:image/webp;base64,") for i in body["images"])


async def test_request_ids_are_echoed_or_made(shared: InProcess) -> None:
    own = await shared.client.get("/healthz", headers={"x-request-id": "abc-123"})
    made = await shared.client.get("/healthz")
    assert own.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])


async def test_health_readiness_catalog_and_metrics(shared: InProcess) -> None:
    client = shared.client
    assert (await client.post("/generate", json={"seed": 1, "n": 2})).status_code == 200
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    models = (await client.get("/models")).json()["models"]
    metrics = (await client.get("/metrics")).text
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert all(w["alive"] for w in ready.json()["workers"])
    assert {m["name"] for m in models} == {"dcgan-faces-64", "vgg19-caffe"}
    model = next(m for m in models if m["name"] == "dcgan-faces-64")
    assert model["status"] == "available" and model["devices"] == ["cpu"]
    assert model["license"]["name"] == "MIT" and model["default"] is True
    for name in ("atelier_queue_length", "atelier_queue_wait_seconds_bucket",
                 "atelier_batch_images_bucket", "atelier_compute_seconds_bucket",
                 'atelier_http_requests_total{method="POST",route="/generate",status="200"}'):
        assert name in metrics


async def test_docs_work_offline_and_describe_every_parameter(shared: InProcess) -> None:
    page = (await shared.client.get("/docs")).text
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page)
    schema = (await shared.client.get("/openapi.json")).json()
    for asset in assets:
        assert not asset.startswith("http"), asset  # nothing from a CDN
        assert (await shared.client.get(asset)).status_code == 200, asset
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    for name in ("GenerateRequest", "InterpolateRequest"):
        for field, spec in schema["components"]["schemas"][name]["properties"].items():
            assert spec.get("description"), (name, field)
            assert spec.get("examples"), (name, field)


# ---- /stylize: validation -----------------------------------------------------------------


def _bomb() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (1000, 1000)).save(buffer, "PNG")  # 1 MP > 250 000 pixels, ~1 KB
    return buffer.getvalue()


JPEG = (DATA / "content.jpg").read_bytes()


@pytest.mark.parametrize(
    ("files", "data", "status", "field"),
    [
        (upload(), {"step": "10"}, 422, "step"),  # a misspelt field is not ignored
        (upload(), {"style_weight": "inf"}, 422, "style_weight"),
        (upload(), {"style_weight": "nan"}, 422, "style_weight"),
        (upload(), {"style_weight": "-1"}, 422, "style_weight"),
        (upload(), {"style_blend": "0.7,x"}, 422, "style_blend"),
        (upload(), {"style_blend": "0.5,0.5"}, 422, "style_blend"),  # 2 weights, 1 style
        (upload(None, JPEG, JPEG), {"style_blend": "1"}, 422, "style_blend"),
        (upload(), {"steps": "51"}, 422, "steps"),  # over ATELIER_MAX_STEPS
        (upload(), {"steps": "0"}, 422, "steps"),
        (upload(), {"size": "99999"}, 422, "size"),
        (upload(), {"optimizer": "sgd"}, 422, "optimizer"),
        (upload(), {"preserve_color": "sepia"}, 422, "preserve_color"),
        (upload(), {"steps": "4", "preview_every": "5"}, 422, "preview_every"),
        (upload(_bomb()), {}, 413, "content"),
        # a GIF header declaring 16x16, then no image: corrupt (b"GIF89a but not really"
        # would declare 25120x29813 pixels, refused as too large before decoding)
        (upload(b"GIF89a\x10\x00\x10\x00\x00\x00\x00but not really"), {}, 422, "content"),
        (upload(b"plain text, not an image"), {}, 415, "content"),
        (upload(None, JPEG[: len(JPEG) // 2]), {}, 422, "style"),
        ([("style", ("s.jpg", JPEG, "image/jpeg"))], {}, 422, "content"),
    ],
)
async def test_bad_stylize_requests_get_problems_naming_the_field(
    shared: InProcess, files: list[tuple[str, Any]], data: dict[str, str], status: int,
    field: str
) -> None:
    before = len(shared.runtime.computed)
    response = await shared.client.post("/stylize", files=files, data=data)
    problem = assert_problem(response, status)
    assert any(f == field or f.startswith(f"{field}.") for f in fields(problem)), problem
    assert len(shared.runtime.computed) == before  # nothing reached a worker


# ---- jobs and their events ----------------------------------------------------------------


async def test_a_synchronous_request_answers_with_the_image(shared: InProcess) -> None:
    response = await shared.client.post("/stylize", files=upload(),
                                        data={"size": "40", "steps": "3"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(response.content)).size) == 40
    job = (await shared.client.get(f"/jobs/{response.headers['x-job-id']}")).json()
    assert job["status"] == "succeeded" and job["step"] == 3 and job["fraction"] == 1.0
    assert job["options"]["style_weight"] == 30.0  # the model manifest's default
    assert job["options"]["size"] == 40


async def test_unknown_jobs_are_404_problems_even_on_the_event_stream(shared: InProcess
                                                                       ) -> None:
    client = shared.client
    for response in (await client.get("/jobs/nope"), await client.get("/jobs/nope/events"),
                     await client.get("/jobs/nope/result"), await client.delete("/jobs/nope")):
        assert assert_problem(response, 404)["type"] == "urn:atelier:problem:unknown-job"
    with pytest.raises(StreamRefused) as refused:
        await aread_events(client, "/jobs/nope/events")
    assert refused.value.response.status_code == 404


@pytest.mark.parametrize("last_event_id", ["abc", "-1", "1.5", "999999"])
async def test_a_malformed_last_event_id_is_422(shared: InProcess, last_event_id: str) -> None:
    job_id = (await shared.client.post("/stylize", files=upload())).headers["x-job-id"]
    response = await shared.client.get(f"/jobs/{job_id}/events",
                                       headers={"last-event-id": last_event_id})
    assert fields(assert_problem(response, 422)) == ["Last-Event-ID"]


async def test_the_last_event_id_sent_resumes_and_one_past_it_is_422(shared: InProcess) -> None:
    job_id = (await shared.client.post("/stylize", files=upload(),
                                       data={"steps": "2"})).headers["x-job-id"]
    events = await aread_events(shared.client, f"/jobs/{job_id}/events")
    last = events[-1].id
    resumed = await aread_events(shared.client, f"/jobs/{job_id}/events",
                                 last_event_id=last - 1)
    assert [e.id for e in resumed] == [last]
    past = await shared.client.get(f"/jobs/{job_id}/events",
                                   headers={"last-event-id": str(last + 1)})
    assert f"1 to {last}" in assert_problem(past, 422)["detail"]


async def test_an_async_job_streams_progress_previews_and_a_result(shared: InProcess) -> None:
    client = shared.client
    accepted = await client.post("/stylize", files=upload(), headers=ASYNC,
                                 data={"steps": "6", "preview_every": "3", "format": "webp"})
    assert accepted.status_code == 202
    assert accepted.headers["preference-applied"] == "respond-async"
    job_id = accepted.json()["id"]
    assert accepted.headers["location"] == f"/jobs/{job_id}"
    assert accepted.json()["status"] in ("queued", "running")

    stream = await aread_events(client, f"/jobs/{job_id}/events")
    kinds = [e.event for e in stream]
    assert kinds[-1] == "succeeded" and kinds.count("succeeded") == 1
    assert [e.data["step"] for e in stream if e.event == "preview"] == [3, 6]
    steps = [e.data["step"] for e in stream if e.event == "progress"]
    assert steps == [0, 1, 2, 3, 4, 5, 6]
    assert [e.id for e in stream] == list(range(1, len(stream) + 1))
    assert stream[-1].data["id"] == job_id and stream[-1].data["status"] == "succeeded"
    preview = next(e for e in stream if e.event == "preview").data["data_url"]
    assert preview.startswith("data:image/jpeg;base64,")

    job = (await client.get(f"/jobs/{job_id}")).json()
    result = await client.get(f"/jobs/{job_id}/result")
    assert job == stream[-1].data  # the final event carries the job document
    assert job["created_at"] and job["started_at"] and job["finished_at"]
    assert result.status_code == 200 and result.headers["content-type"] == "image/webp"
    assert result.headers["x-job-id"] == job_id


async def test_a_multipart_body_cut_short_is_refused_not_run_without_its_last_part(
        shared: InProcess) -> None:
    """python-multipart drops an unterminated last part without a word: the job would run
    with a field back to its default or a style fewer."""
    photo = (DATA / "content.jpg").read_bytes()

    def part(name: str, data: bytes, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename
                                                     else "")
        return (f"--xx\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data
                + b"\r\n")

    body = (part("steps", b"2") + part("content", photo, "a.jpg")
            + part("style", photo, "b.jpg") + part("style_blend", b"1"))
    headers = {**ASYNC, "content-type": "multipart/form-data; boundary=xx"}
    cut = await shared.client.post("/stylize", content=body, headers=headers)
    problem = assert_problem(cut, 400)
    assert "cut short" in problem["detail"]
    whole = await shared.client.post("/stylize", content=body + b"--xx--\r\n", headers=headers)
    assert whole.status_code == 202, whole.text
    assert whole.json()["options"]["style_blend"] == [1.0]


async def test_a_field_given_twice_is_refused_unless_it_is_a_list(shared: InProcess) -> None:
    client = shared.client
    twice = await client.post("/stylize", files=upload(), headers=ASYNC,
                              data={"steps": ["2", "3"]})
    assert fields(assert_problem(twice, 422)) == ["steps"]
    photo = (DATA / "content.jpg").read_bytes()
    two_contents = [("content", ("b.jpg", photo, "image/jpeg")), *upload()]
    refused = await client.post("/stylize", files=two_contents, headers=ASYNC)
    assert fields(assert_problem(refused, 422)) == ["content"]
    # the style images and their weights are lists: several are the point
    ok = await client.post("/stylize", files=upload(photo, photo, photo), headers=ASYNC,
                           data={"steps": "2", "style_blend": ["1", "3"]})  # two styles
    assert ok.status_code == 202, ok.text
    assert ok.json()["options"]["style_blend"] == [1.0, 3.0]


def test_respond_async_is_a_preference_of_its_own_not_a_substring() -> None:
    from app.api.routes.stylize import _prefers_async

    for header in ("respond-async", "Respond-Async", "wait=10, respond-async",
                   "respond-async; foo=bar", " respond-async ,handling=lenient"):
        assert _prefers_async(header), header
    for header in ("respond-asyncX", "no-respond-async", "wait=respond-async", "return=minimal"):
        assert not _prefers_async(header), header


async def test_head_answers_wherever_get_does_without_a_body(shared: InProcess) -> None:
    client = shared.client
    for path in ("/healthz", "/readyz", "/models", "/openapi.json", "/studio/config", "/"):
        got, head = await client.get(path), await client.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers[
            "content-type"], path
    job_id = (await client.post("/stylize", files=upload(), headers=ASYNC,
                                data={"steps": "2"})).json()["id"]
    await aread_events(client, f"/jobs/{job_id}/events")
    result = await client.head(f"/jobs/{job_id}/result")
    whole = await client.get(f"/jobs/{job_id}/result")
    assert result.status_code == 200 and result.content == b""
    assert result.headers["content-length"] == str(len(whole.content))
    assert result.headers["etag"] == whole.headers["etag"]
    # an event stream's head goes out without waiting for its end
    events = await client.head(f"/jobs/{job_id}/events")
    assert events.status_code == 200 and events.content == b""
    assert events.headers["content-type"].startswith("text/event-stream")
    assert (await client.head("/jobs/nope")).status_code == 404
    refused = await client.head("/generate")  # POST only
    assert refused.status_code == 405 and refused.content == b""


async def test_a_result_revalidates_and_resumes_by_its_etag(shared: InProcess) -> None:
    client = shared.client
    job_id = (await client.post("/stylize", files=upload(), headers=ASYNC,
                                data={"steps": "2"})).json()["id"]
    await aread_events(client, f"/jobs/{job_id}/events")  # until it ends
    path = f"/jobs/{job_id}/result"
    whole = await client.get(path)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    etag, size, data = whole.headers["etag"], len(whole.content), whole.content
    assert etag == f'"{job_id}"' and whole.headers["last-modified"].endswith(" GMT")

    unchanged = await client.get(path, headers={"if-none-match": f'"other", {etag}'})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    assert (await client.get(path, headers={"if-none-match": '"other"'})).status_code == 200

    head = await client.get(path, headers={"range": "bytes=0-9"})
    tail = await client.get(path, headers={"range": "bytes=10-", "if-range": etag})
    suffix = await client.get(path, headers={"range": "bytes=-5"})
    assert head.status_code == tail.status_code == suffix.status_code == 206
    assert head.headers["content-range"] == f"bytes 0-9/{size}"
    assert head.content + tail.content == data and suffix.content == data[-5:]
    # a stale If-Range, several ranges or a range the server does not read: the whole image
    for ignored in ({"range": "bytes=0-9", "if-range": '"old"'}, {"range": "bytes=0-1,5-6"},
                    {"range": "bytes=9-2"}, {"range": "pages=1"}):
        answer = await client.get(path, headers=ignored)
        assert answer.status_code == 200 and answer.content == data, ignored
    past = await client.get(path, headers={"range": f"bytes={size}-"})
    assert assert_problem(past, 416) and past.headers["content-range"] == f"bytes */{size}"
    # numbers longer than `int` reads (4300 digits) still fit a 16 KiB head
    huge = "9" * 5000
    assert_problem(await client.get(path, headers={"range": f"bytes={huge}-"}), 416)
    for whole in (f"bytes=0-{huge}", f"bytes=-{huge}"):
        answer = await client.get(path, headers={"range": whole})
        assert answer.status_code == 206 and answer.content == data, whole


async def test_events_resume_after_the_last_event_id(shared: InProcess) -> None:
    client = shared.client
    job_id = (await client.post("/stylize", files=upload(),
                                data={"steps": "5", "preview_every": "2"})).headers["x-job-id"]
    url = f"/jobs/{job_id}/events"
    everything = await aread_events(client, url)
    first = await aread_events(client, url, limit=3)
    rest = await aread_events(client, url, last_event_id=first[-1].id)
    assert first + rest == everything
    assert [e.id for e in rest] == [e.id for e in everything[3:]]
    assert rest[-1].final and rest[-1].event == "succeeded"
    last_only = await aread_events(client, url, last_event_id=everything[-2].id)
    assert last_only == everything[-1:]
    # after the final event there is nothing more: the stream ends at once
    assert [e async for e in astream(client, url, last_event_id=everything[-1].id)] == []


async def test_unfinished_results_are_409_and_a_cancelled_job_says_so(fresh: InProcess
                                                                       ) -> None:
    client, runtime = fresh.client, fresh.runtime
    runtime.gate.clear()  # the job starts, then waits before its first step
    job_id = (await client.post("/stylize", files=upload(), headers=ASYNC,
                                data={"steps": "40"})).json()["id"]
    early = await client.get(f"/jobs/{job_id}/result")
    problem = assert_problem(early, 409)
    assert problem["job_status"] in ("queued", "running")
    assert early.headers["x-job-id"] == job_id
    canceled = await client.delete(f"/jobs/{job_id}")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    stream = await aread_events(client, f"/jobs/{job_id}/events")
    assert stream[-1].event == "canceled" and stream[-1].data["status"] == "canceled"
    after = assert_problem(await client.get(f"/jobs/{job_id}/result"), 409)
    assert after["job_status"] == "canceled"


async def test_job_limits_and_ttl() -> None:
    settings = make_settings(**(SETTINGS | {"max_active_jobs": 1, "job_ttl_s": 0.3}))
    async with in_process(settings) as app:
        client, runtime = app.client, app.runtime
        runtime.gate.clear()
        long_job = (await client.post("/stylize", files=upload(), headers=ASYNC,
                                      data={"steps": "40"})).json()["id"]
        refused = await client.post("/stylize", files=upload(), headers=ASYNC)
        problem = assert_problem(refused, 503)
        assert problem["type"] == "urn:atelier:problem:job-limit"
        assert int(refused.headers["retry-after"]) > 0
        await client.delete(f"/jobs/{long_job}")
        runtime.gate.set()

        done = await client.post("/stylize", files=upload())
        assert done.status_code == 200
        job_id = done.headers["x-job-id"]
        results = settings.jobs_dir / "results"
        result_files = list(results.iterdir())
        assert len(result_files) == 1
        await until(lambda: not result_files[0].exists(), timeout=5)  # the janitor's purge
        assert_problem(await client.get(f"/jobs/{job_id}"), 404)
        assert_problem(await client.get(f"/jobs/{job_id}/result"), 404)


# ---- faults of the work, as problems ------------------------------------------------------


async def test_an_unexpected_error_is_a_500_problem_with_the_request_id(fresh: InProcess
                                                                         ) -> None:
    async def broken(**_kwargs: Any) -> None:
        raise KeyError("secret-key")

    fresh.app.state.generation.generate = broken
    own = await fresh.client.post("/generate", json={}, headers={"x-request-id": "mine-1"})
    made = await fresh.client.post("/generate", json={})
    for response in (own, made):
        problem = assert_problem(response, 500)
        assert problem["type"] == "urn:atelier:problem:internal"
        assert problem["detail"] == "KeyError while processing the request"
        assert "secret" not in response.text
        assert len(response.headers.get_list("x-request-id")) == 1
    assert own.headers["x-request-id"] == "mine-1" == own.json()["request_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert (await fresh.client.get("/healthz")).status_code == 200


class WorkerKiller(BaseException):
    """Escapes the worker's `except Exception`, as a fault of the thread itself would."""


def kill_once(runtime: StubRuntime, kind: type[WorkItem]) -> None:
    def kill(batch: Sequence[WorkItem], max_images: int) -> None:
        if isinstance(batch[0], kind):
            runtime.behaviour = None
            raise WorkerKiller()

    runtime.behaviour = kill


def assert_worker_crashed(response: httpx.Response) -> None:
    problem = assert_problem(response, 503)
    assert problem["type"] == "urn:atelier:problem:worker-crashed"
    assert response.headers["retry-after"] == "1"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_crashed_worker_is_a_503_with_retry_after_on_generate(fresh: InProcess
                                                                       ) -> None:
    kill_once(fresh.runtime, GenerateWork)
    assert_worker_crashed(await fresh.client.post("/generate", json={"seed": 1}))
    pool = fresh.app.state.pool
    await until(lambda: pool.metrics.worker_restarts._value.get() >= 1 and pool.healthy)
    assert (await fresh.client.post("/generate", json={"seed": 1})).status_code == 200


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_crashed_worker_fails_the_job_with_a_503_error(fresh: InProcess) -> None:
    kill_once(fresh.runtime, StylizeWork)
    job_id = (await fresh.client.post("/stylize", files=upload(), headers=ASYNC)).json()["id"]
    stream = await aread_events(fresh.client, f"/jobs/{job_id}/events")
    assert stream[-1].event == "failed"
    job = (await fresh.client.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "failed" and job == stream[-1].data
    assert job["error"]["status"] == 503
    assert job["error"]["type"] == "urn:atelier:problem:worker-crashed"
    result = assert_problem(await fresh.client.get(f"/jobs/{job_id}/result"), 503)
    assert result["type"] == "urn:atelier:problem:worker-crashed"
    assert result["job"]["id"] == job_id


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_crashed_worker_is_a_503_with_retry_after_on_a_synchronous_stylize(
    fresh: InProcess,
) -> None:
    """The same fault as on /generate, and retrying the same request is as likely to work:
    the synchronous answer should say when, as /generate's does."""
    kill_once(fresh.runtime, StylizeWork)
    assert_worker_crashed(await fresh.client.post("/stylize", files=upload()))
