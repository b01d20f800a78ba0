"""Boot the service the way `make run` does (`atelier serve`) and call it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port


def atelier_command() -> list[str]:
    script = Path(sys.executable).parent / "atelier"
    if script.exists():
        return [str(script)]
    found = shutil.which("atelier")
    return [found] if found else [sys.executable, "-m", "app.cli"]


def test_atelier_serve_boots_answers_and_stops_cleanly(real_catalog: object,
                                                       tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "ATELIER_PORT": str(port), "ATELIER_LOG_FORMAT": "json",
           "ATELIER_JOBS_DIR": str(tmp_path / "jobs")}
    proc = subprocess.Popen(
        [*atelier_command(), "serve"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.2)
        response = httpx.post(f"{url}/generate", json={"seed": 1, "n": 2}, timeout=30)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    # A requested stop that drains cleanly is a success.
    assert proc.returncode == 0, output
    assert '"msg": "request"' in output and '"path": "/generate"' in output
    assert '"msg": "stopped"' in output
