"""Memory under a burst of large uploads: bounded by design, not by luck.

`atelier serve` in a subprocess (CPU, its own jobs dir). After a warm-up job (the VGG is
loaded, every lazy allocation made) its peak RSS is reset, then `CLIENTS` clients post
together, each, a 6000x4000 JPEG content image and four 4000x4000 JPEG style images
(noise and gradients, ~14 MiB per request) for a 64 px, 2-step job, and wait for it.

The decoded pixels are what could blow up: one 6000x4000 RGB image is 72 MB in uint8 and
288 MB in float32, and a 4000x4000 one 48/192 MB, ~1 GB per request in float32 had every
upload been decoded at full size. A service whose decoding is bounded by design (straight
to about the size the job needs) holds per request little more than its compressed bytes,
so the peak growth must stay under `MAX_GROWTH_MB`: about three times the ~170 MB of bodies,
half of what one request decoded at full size in float32 would take. Every request must get
202 or a clean 503/413 problem (never a 5xx, never a broken connection), every accepted job
must succeed, and the server must still answer afterwards. The figures (baseline, peak and
growth of VmRSS) are printed: `pytest -s -m slow tests/test_upload_burst.py`.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import free_port
from tests.test_server_boot import atelier_command

pytestmark = pytest.mark.slow

CLIENTS = 12
STYLES = 4
CONTENT_SIZE = (6000, 4000)
STYLE_SIZE = (4000, 4000)
# Peak RSS growth over the warmed-up baseline, for the whole burst: about 3x the ~170 MB of
# request bodies in flight. Decoding at full size blows it (one request's pixels in float32
# alone are ~1 GB); decoding straight to the job's size stays near the bodies (~190 MB).
MAX_GROWTH_MB = 512
FINAL = {"succeeded", "failed", "canceled"}
PROBLEM_JSON = "application/problem+json"


def _photo(width: int, height: int, quality: int = 75) -> bytes:
    """A JPEG that does not compress to nothing: coarse and fine noise, two gradients."""
    coarse = Image.effect_noise((width // 4, height // 4), 48).resize(
        (width, height), Image.Resampling.BICUBIC)
    fine = Image.effect_noise((width, height), 6)
    linear = Image.linear_gradient("L").resize((width, height))
    radial = Image.radial_gradient("L").resize((width, height))
    image = Image.merge("RGB", (coarse, Image.blend(linear, fine, 0.5), radial))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _small_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").resize((48, 32)).save(buffer, "JPEG")
    return buffer.getvalue()


def _memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: `5` to clear_refs); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def uploads() -> dict[str, Any]:
    content = _photo(*CONTENT_SIZE)
    styles = [_photo(*STYLE_SIZE) for _ in range(STYLES)]
    return {"content": content, "styles": styles,
            "body_mb": (len(content) + sum(map(len, styles))) / 2**20}


@pytest.fixture
def service(tmp_path: Path, real_catalog: object) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = {**os.environ, "ATELIER_PORT": str(port), "ATELIER_JOBS_DIR": str(tmp_path / "jobs"),
           "ATELIER_DEVICES": "cpu", "ATELIER_LOG_FORMAT": "json",
           "ATELIER_LOG_LEVEL": "WARNING", "ATELIER_SHUTDOWN_GRACE_S": "5"}
    proc = subprocess.Popen([*atelier_command(), "serve"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def _post(url: str, uploads: dict[str, Any], start: threading.Barrier) -> httpx.Response:
    files = [("content", ("content.jpg", uploads["content"], "image/jpeg"))]
    files += [("style", (f"style{i}.jpg", data, "image/jpeg"))
              for i, data in enumerate(uploads["styles"])]
    with httpx.Client(base_url=url, timeout=300) as client:
        start.wait()
        return client.post("/stylize", files=files, data={"size": "64", "steps": "2"},
                           headers={"Prefer": "respond-async"})


def test_a_burst_of_large_uploads_keeps_memory_bounded(
        service: tuple[subprocess.Popen[str], str], uploads: dict[str, Any]) -> None:
    proc, url = service
    client = httpx.Client(base_url=url, timeout=120)
    small = [("content", ("c.jpg", _small_jpeg(), "image/jpeg")),
             ("style", ("s.jpg", _small_jpeg(), "image/jpeg"))]
    warm = client.post("/stylize", files=small, data={"size": "64", "steps": "2"})
    assert warm.status_code == 200, warm.text  # the VGG is loaded, the lanes warm

    idle = _memory_kb(proc.pid)
    reset = _reset_peak(proc.pid)
    baseline = _memory_kb(proc.pid)["VmRSS"] if reset else idle["VmHWM"]
    start = threading.Barrier(CLIENTS)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:  # VmRSS over time, for the figures (VmHWM is the peak)
        while not done.is_set():
            samples.append(_memory_kb(proc.pid)["VmRSS"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(lambda _: _post(url, uploads, start), range(CLIENTS)))
    uploaded_s = time.monotonic() - started

    statuses = Counter(r.status_code for r in responses)
    accepted = [r.json()["id"] for r in responses if r.status_code == 202]
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + 300
    for job_id in accepted:
        while (job := client.get(f"/jobs/{job_id}").json())["status"] not in FINAL:
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        outcomes[job["status"]] += 1
    finished_s = time.monotonic() - started
    done.set()
    sampler.join()
    after = _memory_kb(proc.pid)
    peak = after["VmHWM"]
    growth_mb = (peak - baseline) / 1024

    print(f"\n\nupload burst: {CLIENTS} concurrent POST /stylize, each a "
          f"{CONTENT_SIZE[0]}x{CONTENT_SIZE[1]} + {STYLES} x {STYLE_SIZE[0]}x{STYLE_SIZE[1]} "
          f"JPEG body of {uploads['body_mb']:.1f} MiB (size 64, steps 2)")
    print(f"  statuses {dict(statuses)}; jobs {dict(outcomes)}; uploads answered in "
          f"{uploaded_s:.1f} s, jobs done in {finished_s:.1f} s")
    print(f"  RSS idle {idle['VmRSS'] / 1024:.0f} MB (peak so far {idle['VmHWM'] / 1024:.0f} MB)"
          f", baseline {baseline / 1024:.0f} MB{'' if reset else ' (VmHWM: peak not reset)'}")
    print(f"  peak (VmHWM) {peak / 1024:.0f} MB, sampled max "
          f"{max(samples, default=0) / 1024:.0f} MB, after {after['VmRSS'] / 1024:.0f} MB")
    print(f"  peak growth {growth_mb:.0f} MB (bound {MAX_GROWTH_MB} MB)")

    for response in responses:
        assert response.status_code in (202, 503, 413), (response.status_code, response.text)
        if response.status_code != 202:
            assert response.headers["content-type"] == PROBLEM_JSON, response.text
    assert outcomes == Counter(succeeded=len(accepted)), outcomes
    assert accepted, "no upload was accepted"
    assert client.get("/readyz").status_code == 200
    assert client.post("/stylize", files=small, data={"size": "32", "steps": "1"}
                       ).status_code == 200
    client.close()
    assert growth_mb < MAX_GROWTH_MB, (
        f"peak RSS grew by {growth_mb:.0f} MB under the burst (bound {MAX_GROWTH_MB} MB)")
