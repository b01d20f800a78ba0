"""The studio's own JSON (GET /studio/config, GET /studio/jobs/{id}/queue), without a browser
(they sit with the browser tests because only the page uses them)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.routes import studio
from app.main import create_app
from app.services.jobs import Job, JobStatus
from app.settings import PROJECT_ROOT
from tests.browser.conftest import MAX_UPLOAD
from tests.conftest import LiveServer, make_settings

DATA = Path(__file__).resolve().parent.parent / "data"
GAN = tomllib.loads((PROJECT_ROOT / "models" / "dcgan-faces-64.toml").read_text())


def test_the_config_carries_limits_presets_examples_and_the_gan_manifest(
        studio_server: LiveServer) -> None:
    answer = httpx.get(f"{studio_server.url}/studio/config")
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    config = answer.json()
    assert config["limits"]["max_upload_bytes"] == MAX_UPLOAD
    model = next(m for m in config["generate"]["models"] if m["name"] == "dcgan-faces-64")
    assert model["truncation"] == GAN["defaults"]["truncation"]
    assert model["truncation_range"] == GAN["defaults"]["truncation_range"]
    style = config["stylize"]
    assert [p["id"] for p in style["presets"]] == ["draft", "standard", "fine"]
    assert 30 in style["strengths"] and style["defaults"]["style_weight"] == 30
    assert style["capacity"] >= 1
    for example in config["examples"]["content"] + config["examples"]["style"]:
        image = httpx.get(f"{studio_server.url}/studio/examples/{example['file']}")
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        assert len(image.content) < 150_000 and example["credit"] and example["licence"]


def test_the_step_rate_is_fitted_to_measured_jobs() -> None:
    # 0.01 s + 1e-5 s per pixel of size², measured at three sizes: both terms come back.
    points = [(size, 0.01 + 1e-5 * size * size) for size in (64, 128, 256)]
    fit = studio._fit(points)
    assert fit is not None
    assert fit["overhead_s"] == pytest.approx(0.01, rel=1e-6)
    assert fit["per_px_s"] == pytest.approx(1e-5, rel=1e-6)
    assert studio._fit([(100, 0.5)]) == {"overhead_s": 0.0, "per_px_s": 0.5 / 100**2}
    assert studio._fit([]) is None


def _job(status: JobStatus, size: int, steps: int, step: int = 0, **fields: Any) -> Job:
    return Job(id=f"{status.value}{size}", steps=steps, options={"size": size}, status=status,
               step=step, **fields)


def test_the_wait_of_a_queued_job_adds_up_the_work_ahead() -> None:
    rate = {"lbfgs": {"overhead_s": 0.0, "per_px_s": 1e-4}}  # 100 px: 1 s a step
    running = [_job(JobStatus.RUNNING, 100, 10)]  # no ETA yet: 10 s estimated
    ahead = [_job(JobStatus.QUEUED, 100, 5)]
    assert studio._wait(rate, running, ahead, capacity=1) == 15.0
    assert studio._wait(rate, running, ahead, capacity=2) == 5.0
    assert studio._wait({"lbfgs": None}, running, ahead, capacity=1) is None


def test_queue_positions_and_their_privacy(studio_server: LiveServer, real_catalog: object,
                                           tmp_path: Path) -> None:
    files = [("content", ("c.jpg", (DATA / "content.jpg").read_bytes(), "image/jpeg")),
             ("style", ("s.jpg", (DATA / "starry.jpg").read_bytes(), "image/jpeg"))]
    with httpx.Client(base_url=studio_server.url, timeout=30) as client:
        unknown = client.get("/studio/jobs/AAAAAAAAAAAAAAAA/queue")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"
        jobs = [client.post("/stylize", files=files, headers={"Prefer": "respond-async"},
                            data={"size": "64", "steps": "2000"}).json()["id"]
                for _ in range(3)]
        try:
            places = [client.get(f"/studio/jobs/{job}/queue").json() for job in jobs]
            assert [p["position"] for p in places[1:]] == [1, 2]
            assert places[0]["status"] in ("queued", "running")
        finally:
            for job in reversed(jobs):
                client.delete(f"/jobs/{job}")
    # With API keys on, the page's config stays public (it says that keys are on), while a
    # job's place in line is for the key that made the job only, as the job itself is.
    key, other = {"Authorization": f"Bearer {'k' * 32}"}, {"Authorization": f"Bearer {'o' * 32}"}
    keyed = make_settings(jobs_dir=tmp_path, api_keys=f"{'k' * 32},{'o' * 32}")
    with LiveServer(create_app(keyed)) as server, httpx.Client(base_url=server.url) as client:
        config = client.get("/studio/config")
        assert config.status_code == 200 and config.json()["auth"] == {"api_keys": True}
        job = client.post("/stylize", files=files, data={"size": "32", "steps": "2000"},
                          headers={"Prefer": "respond-async", **key}).json()["id"]
        try:
            missing = client.get(f"/studio/jobs/{job}/queue")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"].startswith("Bearer")
            assert client.get(f"/studio/jobs/{job}/queue", headers=other).status_code == 404
            own = client.get(f"/studio/jobs/{job}/queue", headers=key)
            assert own.status_code == 200 and own.json()["id"] == job
        finally:
            client.delete(f"/jobs/{job}", headers=key)
