"""The real app with the real DCGAN weights, over real HTTP.

Validation, negotiation errors, protocol errors, request ids, health, metrics and the docs
need no model: they run in-process in tests/test_api_inprocess.py.
"""

from __future__ import annotations

import base64
import concurrent.futures
import io
import re

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer

PROBLEM = "application/problem+json"


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_one_image_comes_back_as_png_with_seed_and_model(live: LiveServer) -> None:
    with live.client() as client:
        response = client.post("/generate", json={"seed": 42})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed"] == "42"
    assert response.headers["x-model"] == "dcgan-faces-64"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    image = decode(response.content)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_same_seed_same_image_and_random_seed_is_reported(live: LiveServer) -> None:
    with live.client() as client:
        first = client.post("/generate", json={"seed": 7}).content
        again = client.post("/generate", json={"seed": 7}).content
        other = client.post("/generate", json={"seed": 8}).content
        drawn = client.post("/generate")
        replay = client.post("/generate", json={"seed": int(drawn.headers["x-seed"])})
    assert first == again and first != other
    assert drawn.status_code == 200 and replay.content == drawn.content


@pytest.mark.parametrize(
    ("body", "accept", "media_type", "pil_format"),
    [
        ({"format": "jpeg"}, None, "image/jpeg", "JPEG"),
        ({"format": "webp"}, None, "image/webp", "WEBP"),
        ({}, "image/webp", "image/webp", "WEBP"),
        ({}, "image/jpeg;q=0.5, image/png;q=0.9", "image/png", "PNG"),
        ({}, "*/*", "image/png", "PNG"),
    ],
)
def test_format_comes_from_the_body_or_accept(
    live: LiveServer, body: dict[str, str], accept: str | None, media_type: str, pil_format: str
) -> None:
    headers = {"accept": accept} if accept else {}
    with live.client() as client:
        response = client.post("/generate", json={"seed": 1, **body}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert decode(response.content).format == pil_format


def test_several_images_come_back_as_a_grid(live: LiveServer) -> None:
    with live.client() as client:
        response = client.post("/generate", json={"seed": 3, "n": 4})
    assert response.status_code == 200
    grid = decode(response.content)
    assert grid.size == (2 * 64 + 3 * 2, 2 * 64 + 3 * 2)


def test_json_lists_each_image_with_its_seed(live: LiveServer) -> None:
    with live.client() as client:
        listing = client.post(
            "/generate", json={"seed": 10, "n": 3, "format": "webp"},
            headers={"accept": "application/json"},
        )
        single = client.post("/generate", json={"seed": 11, "format": "webp"})
    assert listing.status_code == 200
    body = listing.json()
    assert body["model"] == "dcgan-faces-64"
    assert [i["seed"] for i in body["images"]] == [10, 11, 12]
    prefix = "data:image/webp;base64,"
    assert all(i["data_url"].startswith(prefix) for i in body["images"])
    # image 1 of a request seeded 10 is the image of seed 11 on its own
    assert base64.b64decode(body["images"][1]["data_url"][len(prefix):]) == single.content


def test_a_seed_gives_the_same_image_when_batched_with_other_requests(live: LiveServer) -> None:
    json_accept = {"accept": "application/json"}
    with live.client() as client:
        alone = client.post("/generate", json={"seed": 500}, headers=json_accept).json()
    pool = live.app.state.pool
    batches_before = pool.metrics.batch_images.labels("GenerateWork")._sum.get()

    def ask(seed: int, n: int) -> dict[str, object]:
        with live.client() as client:
            return client.post("/generate", json={"seed": seed, "n": n},
                               headers=json_accept).json()

    with concurrent.futures.ThreadPoolExecutor(8) as threads:
        futures = [threads.submit(ask, 497 + i, 5) for i in range(8)]
        results = [f.result() for f in futures]
    assert pool.metrics.batch_images.labels("GenerateWork")._sum.get() > batches_before
    target = alone["images"][0]["data_url"]  # type: ignore[index]
    for offset, result in enumerate(results):
        seeds = [i["seed"] for i in result["images"]]  # type: ignore[index]
        if 500 in seeds:
            assert result["images"][seeds.index(500)]["data_url"] == target, offset  # type: ignore[index]


def test_truncation_changes_images_and_is_reproducible(live: LiveServer) -> None:
    with live.client() as client:
        plain = client.post("/generate", json={"seed": 5}).content
        low = client.post("/generate", json={"seed": 5, "truncation": 0.4}).content
        low_again = client.post("/generate", json={"seed": 5, "truncation": 0.4}).content
    assert low == low_again and low != plain


def test_interpolation_is_an_animation_or_a_grid(live: LiveServer) -> None:
    with live.client() as client:
        webp = client.post("/generate/interpolate",
                           json={"seed_from": 1, "seed_to": 2, "steps": 6})
        gif = client.post("/generate/interpolate",
                          json={"seed_from": 1, "seed_to": 2, "steps": 5, "format": "gif"})
        grid = client.post("/generate/interpolate",
                           json={"seed_from": 1, "seed_to": 2, "steps": 4, "format": "png"})
        start = client.post("/generate", json={"seed": 1}).content
    assert webp.headers["content-type"] == "image/webp"
    animation = decode(webp.content)
    assert animation.n_frames == 6 and animation.is_animated
    assert decode(gif.content).n_frames == 5
    grid_image = decode(grid.content)
    assert grid_image.size == (2 * 64 + 6, 2 * 64 + 6)
    # the grid's first frame is exactly the image of seed_from
    first = grid_image.crop((2, 2, 66, 66)).convert("RGB")
    assert first.tobytes() == decode(start).convert("RGB").tobytes()


def test_one_structured_log_line_per_request(live: LiveServer) -> None:
    import logging

    class Collect(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    logger = logging.getLogger("atelier.access")
    collect, level = Collect(), logger.level
    logger.addHandler(collect)
    logger.setLevel(logging.INFO)
    try:
        with live.client() as client:
            client.post("/generate", json={"seed": 1, "n": 3},
                        headers={"x-request-id": "log-me"})
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    lines = [r for r in collect.records
             if getattr(r, "fields", {}).get("request_id") == "log-me"]
    assert len(lines) == 1
    fields = lines[0].fields  # type: ignore[attr-defined]
    assert fields["status"] == 200 and fields["model"] == "dcgan-faces-64" and fields["n"] == 3
    assert fields["batch_images"] >= 3
    assert fields["queue_wait_ms"] >= 0 and fields["compute_ms"] > 0


def test_httpx_error_types_are_not_leaked(live: LiveServer) -> None:
    # An empty body is the documented way to ask for one random image.
    response = httpx.post(f"{live.url}/generate", timeout=30)
    assert response.status_code == 200


def test_an_oversized_json_body_is_413(live: LiveServer) -> None:
    with live.client() as client:
        response = client.post("/generate", content=b" " * 100_000,
                               headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
