"""The `atelier` command, locally and against a running server."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.cli import main
from tests.conftest import LiveServer, wait_until
from tests.test_server_boot import atelier_command

DATA = Path(__file__).parent / "data"


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["stylize", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_local_generate_matches_the_service(live: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "face.png"
    assert main(["generate", "--seed", "42", "-o", str(out)]) == 0
    served = httpx.post(f"{live.url}/generate", json={"seed": 42}, timeout=30).content
    assert out.read_bytes() == served
    grid = tmp_path / "faces.webp"
    assert main(["generate", "--seed", "42", "-n", "4", "-o", str(grid),
                 "--server", live.url]) == 0
    image = Image.open(grid)
    assert image.format == "WEBP" and image.size == (134, 134)


def test_local_stylize_writes_the_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    out = tmp_path / "out.jpg"
    code = main(["stylize", str(DATA / "content.jpg"), str(DATA / "starry.jpg"),
                 str(DATA / "wave.jpg"), "--style-blend", "0.7,0.3", "--size", "40",
                 "--steps", "3", "--preserve-color", "luminance", "-o", str(out)])
    assert code == 0
    image = Image.open(out)
    assert image.format == "JPEG" and max(image.size) == 40
    assert "3/3" in capsys.readouterr().err  # the progress bar reached the end


def test_remote_stylize_follows_the_event_stream(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code = main(["stylize", str(DATA / "content.jpg"), str(DATA / "starry.jpg"), "--size",
                 "40", "--steps", "4", "-o", str(out), "--server", live.url])
    assert code == 0, capsys.readouterr().err
    assert max(Image.open(io.BytesIO(out.read_bytes())).size) == 40
    assert "4/4" in capsys.readouterr().err


def test_exit_codes(live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                   ) -> None:
    content, style = str(DATA / "content.jpg"), str(DATA / "starry.jpg")
    assert main(["stylize", "missing.jpg", style]) == 2
    assert main(["stylize", content, style, "-o", str(tmp_path / "x.gif2")]) == 2
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    assert main(["stylize", str(not_an_image), style, "-q"]) == 2
    assert main(["stylize", content, style, "--steps", "0", "-q", "--server", live.url]) == 1
    assert "steps" in capsys.readouterr().err
    assert main(["generate", "-o", str(tmp_path / "a.png"), "--server",
                 "http://127.0.0.1:9"]) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["stylize", content, style, "--optimizer", "sgd"])
    assert exit_info.value.code == 2


def test_ctrl_c_cancels_the_remote_job(live: LiveServer, tmp_path: Path) -> None:
    store = live.app.state.stylize.store
    before = set(store._jobs)
    proc = subprocess.Popen(
        [*atelier_command(), "stylize", str(DATA / "content.jpg"), str(DATA / "starry.jpg"),
         "--size", "48", "--steps", "2000", "-o", str(tmp_path / "o.png"),
         "--server", live.url],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until(lambda: any(store.get(j) and store.get(j).step > 0
                               for j in set(store._jobs) - before), timeout=60)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    (job_id,) = set(store._jobs) - before
    wait_until(lambda: store.get(job_id).status.value == "canceled", timeout=15)
    assert not (tmp_path / "o.png").exists()
