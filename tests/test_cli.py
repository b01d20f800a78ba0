"""The `atelier` command, locally and against a running server: results, every class of user
mistake (a readable message, the right exit code, never a traceback), --json, a resumed
event stream and Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent
from PIL import Image

from app.cli import main, remote
from app.main import create_app
from tests.conftest import LiveServer, free_port, make_settings, wait_until
from tests.test_server_boot import atelier_command

DATA = Path(__file__).parent / "data"
CONTENT, STARRY, WAVE = (str(DATA / name) for name in ("content.jpg", "starry.jpg", "wave.jpg"))
TINY = ["--size", "32", "--steps", "2", "-q"]


@pytest.fixture(autouse=True)
def _cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Local runs on the CPU, like the test server (so bytes can be compared)."""
    monkeypatch.setenv("ATELIER_DEVICES", "cpu")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, err


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["stylize", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_stylize_options_come_from_style_params(capsys: pytest.CaptureFixture[str]) -> None:
    from app.services.params import StyleParams

    with pytest.raises(SystemExit):
        main(["stylize", "--help"])
    text = capsys.readouterr().out
    for name in set(StyleParams.model_fields) - {"format", "preview_every"}:
        assert "--" + name.replace("_", "-") in text
    assert "{lbfgs,adam}" in text


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
    code = main(["stylize", CONTENT, STARRY, WAVE, "--style-blend", "0.7,0.3", "--size", "40",
                 "--steps", "3", "--preserve-color", "luminance", "-o", str(out)])
    assert code == 0
    image = Image.open(out)
    assert image.format == "JPEG" and max(image.size) == 40
    assert "3/3" in capsys.readouterr().err  # the progress bar reached the end


def test_remote_stylize_follows_the_event_stream(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code = main(["stylize", CONTENT, STARRY, "--size", "40", "--steps", "4", "-o", str(out),
                 "--server", live.url])
    assert code == 0, capsys.readouterr().err
    assert max(Image.open(io.BytesIO(out.read_bytes())).size) == 40
    assert "4/4" in capsys.readouterr().err


# ---- user mistakes: exit code, a readable message, no traceback -------------------------


def test_bad_option_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ["-o", str(tmp_path / "o.png")]
    cases = [
        (["stylize", CONTENT, STARRY, WAVE, "--style-blend", "0.7,x"],
         "--style-blend: Input should be a valid number"),
        (["stylize", CONTENT, STARRY, WAVE, "--style-blend", "0.7,0.2,0.1"],
         "--style-blend: 3 weights for 2 styles"),
        (["stylize", CONTENT, STARRY, "--steps", "0"], "--steps: Input should be greater"),
        (["stylize", CONTENT, STARRY, "--steps", "2001"], "--steps: must be between 1 and 2000"),
        (["stylize", CONTENT, STARRY, "--style-weight", "nan"], "--style-weight:"),
        (["generate", "-n", "0"], "-n: Input should be greater"),
        (["generate", "-n", "65"], "-n: must be <= 64"),
        (["generate", "--seed", "x"], "--seed: Input should be a valid integer"),
        (["generate", "--truncation", "-1"], "--truncation: Input should be greater"),
    ]
    for argv, message in cases:
        code, _, err = run([*argv, *out], capsys)
        assert code == 2, (argv, err)
        assert err.startswith(f"error: {message}"), (argv, err)
    monkeypatch.setenv("ATELIER_MAX_SIZE", "64")  # local runs keep the server's limits
    code, _, err = run(["stylize", CONTENT, STARRY, "--size", "100", *out], capsys)
    assert code == 2 and err == "error: --size: must be between 16 and 64\n"
    assert not (tmp_path / "o.png").exists()
    with pytest.raises(SystemExit) as exit_info:  # argparse's own choices
        main(["stylize", CONTENT, STARRY, "--optimizer", "sgd"])
    assert exit_info.value.code == 2


def test_invalid_settings_are_usage_errors(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATELIER_MAX_STEPS", "many")
    code, _, err = run(["generate"], capsys)
    assert code == 2 and "ATELIER_MAX_STEPS" in err


def test_missing_and_unreadable_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    out = ["-o", str(tmp_path / "o.png"), *TINY]
    code, _, err = run(["stylize", str(tmp_path / "missing.jpg"), STARRY, *out], capsys)
    assert code == 2 and "missing.jpg: no such file" in err
    code, _, err = run(["stylize", CONTENT, str(tmp_path), *out], capsys)
    assert code == 2 and "is a directory" in err
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.jpg"
        locked.write_bytes(Path(STARRY).read_bytes())
        locked.chmod(0)
        code, _, err = run(["stylize", CONTENT, str(locked), *out], capsys)
        assert code == 2 and "permission denied" in err


def test_inputs_that_are_not_images(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    out = ["-o", str(tmp_path / "o.png"), *TINY]
    code, _, err = run(["stylize", str(notes), STARRY, *out], capsys)
    assert code == 2 and "content: the file is not an image" in err
    code, _, err = run(["stylize", CONTENT, STARRY, str(notes), *out], capsys)
    assert code == 2 and "style[1]: the file is not an image" in err
    code, _, err = run(["stylize", str(notes), STARRY, *out, "--server", live.url], capsys)
    assert code == 2 and "415: Unsupported image: content:" in err


def test_unusable_output_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for output, message in [("x.gif2", "cannot write .gif2 files"),
                            ("nowhere/x.png", "no directory"), (".", "is a directory")]:
        code, _, err = run(["stylize", CONTENT, STARRY, *TINY, "-o",
                            str(tmp_path / output)], capsys)
        assert code == 2 and message in err, err
        code, _, err = run(["generate", "-o", str(tmp_path / output)], capsys)
        assert code == 2 and message in err, err


def test_unknown_and_unpulled_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ["-o", str(tmp_path / "o.png")]
    code, _, err = run(["generate", "--model", "nope", *out], capsys)
    assert code == 2 and "no model named 'nope'" in err
    monkeypatch.setenv("ATELIER_MODEL_DIR", str(tmp_path / "empty"))
    code, _, err = run(["generate", *out], capsys)
    assert code == 1 and "run `atelier models pull dcgan-faces-64`" in err
    code, _, err = run(["stylize", CONTENT, STARRY, *TINY, *out], capsys)
    assert code == 1 and "run `atelier models pull vgg19-caffe`" in err


def test_server_refusals_print_the_problem(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["-o", str(tmp_path / "o.png")]
    code, _, err = run(["stylize", CONTENT, STARRY, "-q", "--size", "2000", *out,
                        "--server", live.url], capsys)
    assert code == 2
    assert "422: Invalid request: size: must be between 16 and 1024" in err
    code, _, err = run(["generate", "--model", "nope", *out, "--server", live.url], capsys)
    assert code == 2 and "404: Unknown model: no model named 'nope'" in err
    settings = make_settings(model_dir=tmp_path / "empty", jobs_dir=tmp_path / "jobs")
    with LiveServer(create_app(settings)) as bare:
        code, _, err = run(["generate", *out, "--server", bare.url], capsys)
    assert code == 1
    assert "503: Model unavailable:" in err and "(retry after 60 s)" in err


def test_a_server_with_api_keys_gets_the_key_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = ["-o", str(tmp_path / "o.png")]
    settings = make_settings(api_keys="sesame-1234567890", jobs_dir=tmp_path / "jobs")
    with LiveServer(create_app(settings)) as locked:
        code, _, err = run(["generate", *out, "--server", locked.url], capsys)
        assert code == 2 and "401" in err
        monkeypatch.setenv("ATELIER_API_KEY", "sesame-1234567890")
        code, _, err = run(["generate", *out, "--server", locked.url], capsys)
        assert code == 0, err
        assert "sesame" not in err
    assert (tmp_path / "o.png").stat().st_size > 0


def test_unreachable_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["-o", str(tmp_path / "o.png")]
    code, _, err = run(["generate", *out, "--server", "http://127.0.0.1:9"], capsys)
    assert code == 3 and "cannot reach http://127.0.0.1:9" in err
    code, _, err = run(["stylize", CONTENT, STARRY, *TINY, *out, "--server",
                        "http://127.0.0.1:9"], capsys)
    assert code == 3 and "cannot reach" in err
    code, _, err = run(["generate", *out, "--server", "127.0.0.1:9"], capsys)
    assert code == 2 and "--server: expected an http:// or https:// URL" in err


def test_a_failed_job_exits_1(live: LiveServer, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    for server in ([], ["--server", live.url]):
        code, _, err = run(["stylize", CONTENT, STARRY, *TINY, "--style-weight", "1e38",
                            "-o", str(tmp_path / "o.png"), *server], capsys)
        assert code == 1
        assert "error: the job failed: Diverged: the loss diverged at step" in err
        # The hint fits the optimizer: L-BFGS (the default) is not told to use L-BFGS.
        assert "lower style_weight (or content_weight, tv_weight)" in err
        assert not (tmp_path / "o.png").exists()
    code, _, err = run(["stylize", CONTENT, STARRY, *TINY, "--style-weight", "1e38",
                        "--optimizer", "adam", "-o", str(tmp_path / "o.png")], capsys)
    assert code == 1 and "lower style_weight, or use optimizer=lbfgs" in err


# ---- --json ----------------------------------------------------------------------------


def test_json_output(live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                     ) -> None:
    code, out, err = run(["generate", "--seed", "7", "-n", "2", "--json", "-o",
                          str(tmp_path / "g.png")], capsys)
    assert code == 0
    generated = json.loads(out)
    assert generated["seeds"] == [7, 8] and generated["seed"] == 7
    assert generated["output"] == str(tmp_path / "g.png") and generated["seconds"] > 0
    for server in ([], ["--server", live.url]):
        code, out, err = run(["stylize", CONTENT, STARRY, "--size", "32", "--steps", "2",
                              "--seed", "3", "--json", "-o", str(tmp_path / "s.png"),
                              *server], capsys)
        assert code == 0, err
        result = json.loads(out)  # one object, nothing else on stdout
        assert result["output"] == str(tmp_path / "s.png")
        assert result["steps"] == 2 and result["seed"] == 3
        assert set(result["losses"]) == {"content", "style", "tv", "total"}
        assert result["seconds"] > 0 and result["model"] == "vgg19-caffe"
        assert (result["job_id"] is not None) == bool(server)
        assert "step/s" not in err  # no progress bar


# ---- the event stream: resumed after a drop, or given up on ---------------------------


@pytest.mark.parametrize("how", ["dropped", "interrupted"])
def test_remote_stylize_resumes_the_event_stream(
    how: str, live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first stream ends after two events (the connection drops, or the server says it
    stopped: `interrupted`): the client reconnects with the last id and the server resumes
    right after it (no event lost or repeated)."""
    real = remote.connect_sse
    streams: list[tuple[str | None, list[str]]] = []

    @contextlib.contextmanager
    def breaking(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Iterator[Any]:
        ids: list[str] = []
        streams.append(((kwargs.get("headers") or {}).get("Last-Event-ID"), ids))
        first = len(streams) == 1
        with real(client, method, url, **kwargs) as source:
            events = source.iter_sse

            def iter_sse() -> Iterator[Any]:
                for event in events():
                    ids.append(event.id)
                    yield event
                    if first and len(ids) == 2:
                        if how == "dropped":
                            raise httpx.RemoteProtocolError("peer closed connection")
                        yield ServerSentEvent("interrupted", json.dumps({"step": 0}))
                        return

            source.iter_sse = iter_sse  # type: ignore[method-assign]
            yield source

    monkeypatch.setattr(remote, "connect_sse", breaking)
    out = tmp_path / "out.png"
    code, _, err = run(["stylize", CONTENT, STARRY, "--size", "32", "--steps", "5", "-o",
                        str(out), "--server", live.url], capsys)
    assert code == 0, err
    assert len(streams) == 2
    (first_after, first_ids), (resumed_after, resumed_ids) = streams
    assert first_after is None and first_ids == ["1", "2"]
    assert resumed_after == "2" and resumed_ids[0] == "3"
    assert "5/5" in err and Image.open(out).size[0] == 32
    assert ("the server stopped" in err) == (how == "interrupted")


def test_remote_stylize_gives_up_on_a_dead_event_stream(
    live: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    attempts: list[str] = []

    @contextlib.contextmanager
    def dead(client: httpx.Client, method: str, url: str, **kwargs: Any) -> Iterator[Any]:
        attempts.append(url)
        raise httpx.ConnectError("connection refused")
        yield

    monkeypatch.setattr(remote, "connect_sse", dead)
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    code, _, err = run(["stylize", CONTENT, STARRY, *TINY, "-o", str(tmp_path / "o.png"),
                        "--server", live.url], capsys)
    assert code == 3 and "lost the event stream of job" in err
    assert len(attempts) == remote.RECONNECTS + 1


class Stderr:
    """A subprocess's stderr, collected as it comes (the progress bar ends no lines)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.proc, self.stream = proc, proc.stderr
        self.data = bytearray()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while chunk := self.stream.read1(4096):
            self.data.extend(chunk)

    def stepped(self) -> bool:
        """The bar has shown step 1 or later (or the process has ended)."""
        return (re.search(rb"\b[1-9]\d*/\d+ \[", bytes(self.data)) is not None
                or self.proc.poll() is not None)

    def text(self) -> str:
        self.thread.join(timeout=10)
        return bytes(self.data).decode(errors="replace")


def atelier(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*atelier_command(), *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def serve(port: int, jobs_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ATELIER_PORT": str(port), "ATELIER_JOBS_DIR": str(jobs_dir),
           "ATELIER_SHUTDOWN_GRACE_S": "0", "ATELIER_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen([*atelier_command(), "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).is_success
        except httpx.TransportError:
            return False

    wait_until(ready, timeout=90)
    return proc


@pytest.mark.slow
def test_remote_stylize_survives_a_server_restart(tmp_path: Path) -> None:
    """SIGTERM mid-job: the server re-queues the job and ends the stream with `interrupted`;
    the client reconnects (Last-Event-ID) until the next server has run the job."""
    out, port = tmp_path / "out.png", free_port()
    server = serve(port, tmp_path / "jobs")
    client = atelier("stylize", CONTENT, STARRY, "--size", "32", "--steps", "30", "-o",
                     str(out), "--server", f"http://127.0.0.1:{port}")
    err = Stderr(client)
    try:
        wait_until(err.stepped, timeout=60)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        server = serve(port, tmp_path / "jobs")
        assert client.wait(timeout=120) == 0, err.text()
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
    text = err.text()
    assert "the server stopped" in text and "30/30" in text and "Traceback" not in text
    assert max(Image.open(out).size) == 32


# ---- Ctrl-C ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_a_local_job_cleanly(tmp_path: Path) -> None:
    # It used to abort one time in five ("terminate called without an active exception"):
    # three runs, interrupted at a few points of a step.
    out = tmp_path / "o.png"
    for delay_s in (0.0, 0.15, 0.4):
        proc = atelier("stylize", CONTENT, STARRY, "--size", "64", "--steps", "2000", "-o",
                       str(out))
        err = Stderr(proc)
        try:
            wait_until(err.stepped, timeout=120)
            time.sleep(delay_s)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        text = err.text()
        assert proc.returncode == 130, text
        assert "Traceback" not in text and "terminate called" not in text, text
        assert text.rstrip().endswith("interrupted; the job was cancelled"), text[-300:]
        assert not out.exists()


def test_ctrl_c_cancels_the_remote_job(live: LiveServer, tmp_path: Path) -> None:
    store = live.app.state.stylize.store
    before = set(store._jobs)
    proc = subprocess.Popen(
        [*atelier_command(), "stylize", CONTENT, STARRY,
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
    assert "Traceback" not in err and "was cancelled" in err, err
    (job_id,) = set(store._jobs) - before
    wait_until(lambda: store.get(job_id).status.value == "canceled", timeout=15)
    assert not (tmp_path / "o.png").exists()
