from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.main import create_app
from tests.conftest import LiveServer, make_settings

CHROMIUM = Path(os.environ.get("ATELIER_CHROMIUM", "/usr/bin/chromium"))
# Chromium flags for a closed machine: no background calls home, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
# The test server's upload limit: the shipped examples (under 80 KB each) fit, a 0.5 MB
# upload does not.
MAX_UPLOAD = 400_000


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("ATELIER_REQUIRE_BROWSER") == "1":
        raise pytest.UsageError(f"{CHROMIUM} is missing; install Debian's chromium package")
    skip = pytest.mark.skip(reason=f"{CHROMIUM} not installed (CI installs it: see .ci/run)")
    for item in items:
        if "browser" in str(item.fspath):
            item.add_marker(skip)


# Module scope: Playwright's sync API keeps an event loop running in the main thread while it
# lives, which would break code under test that calls asyncio.run() (the CLI) afterwards.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def studio_settings(tmp: Path, **overrides: Any) -> Any:
    return make_settings(jobs_dir=tmp, max_upload_bytes=MAX_UPLOAD, progress_every=1,
                         **overrides)


@pytest.fixture(scope="module")
def studio_server(real_catalog: object, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[LiveServer]:
    with LiveServer(create_app(studio_settings(tmp_path_factory.mktemp("jobs")))) as server:
        yield server


class Offline:
    """Lets a page reach loopback only, and records what else it tried."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def __call__(self, route: Any) -> None:
        url = route.request.url
        host = urlsplit(url).hostname
        if url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()


class Jobs:
    """The style jobs a page started (from the 202 answers it got), cancelled at teardown so
    that a long job of one test never holds the worker during the next (with the API key the
    page sent, when it sent one)."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.ids: list[tuple[str, dict[str, str]]] = []

    def __call__(self, response: Any) -> None:
        if response.request.method == "POST" and response.url.endswith("/stylize") and (
                response.status == 202):
            job_id = response.headers.get("x-job-id")
            if job_id:
                key = response.request.headers.get("authorization")
                self.ids.append((job_id, {"Authorization": key} if key else {}))

    def cancel_all(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as client:
            for job_id, headers in self.ids:
                try:
                    client.delete(f"/jobs/{job_id}", headers=headers)
                except httpx.TransportError:
                    return  # that server has stopped: nothing runs there any more


PageFactory = Callable[..., Any]


@pytest.fixture
def new_page(browser: Any, studio_server: LiveServer) -> Iterator[PageFactory]:
    """Pages in fresh browser contexts (own IndexedDB) against the studio server, confined to
    loopback; `viewport=PHONE` for a phone, `color_scheme="dark"` for dark mode."""
    contexts: list[tuple[Any, Offline, Jobs]] = []
    errors: list[str] = []  # uncaught exceptions in the page's scripts

    def make(viewport: dict[str, int] = DESKTOP, server: LiveServer | None = None,
             **options: Any) -> Any:
        target = server or studio_server
        if viewport == PHONE:
            options = {"is_mobile": True, "has_touch": True, **options}
        context = browser.new_context(base_url=target.url, viewport=viewport, **options)
        offline, jobs = Offline(), Jobs(target)
        context.route("**/*", offline)
        page = context.new_page()
        page.on("response", jobs)
        page.on("pageerror", lambda error: errors.append(f"{target.url}: {error}"))
        page.set_default_timeout(20_000)
        page.offline = offline
        page.jobs = jobs
        contexts.append((context, offline, jobs))
        return page

    yield make
    for context, _offline, jobs in contexts:
        context.close()
        jobs.cancel_all()
    for _context, offline, _jobs in contexts:
        assert offline.blocked == [], f"the page tried to leave loopback: {offline.blocked}"
    assert errors == [], f"the page's scripts threw: {errors}"


@pytest.fixture
def page(new_page: PageFactory) -> Any:
    return new_page()


@pytest.fixture
def phone(new_page: PageFactory) -> Any:
    return new_page(PHONE)


def open_studio(page: Any, tab: str = "") -> Any:
    """The studio, once its settings are loaded and its history read."""
    page.goto(f"/#{tab}" if tab else "/")
    page.wait_for_selector("body[data-ready=true]")
    return page


SCREENSHOTS = os.environ.get("ATELIER_SCREENSHOTS")


def showcase(small: int, large: int) -> int:
    """A test's job size: tiny, or large enough to look like a result when the screenshots
    for the docs are being taken."""
    return large if SCREENSHOTS else small


def screenshot(page: Any, name: str, *, full_page: bool = True, top: bool = True) -> None:
    """Saved under $ATELIER_SCREENSHOTS (e.g. docs/screenshots) when it is set: the whole
    page or the viewport, from the top or (`top=False`) where the page is scrolled to; as a
    256-colour PNG (they go into git)."""
    if not SCREENSHOTS:
        return
    import io

    from PIL import Image

    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    if top:
        page.evaluate("window.scrollTo(0, 0)")
    png = page.screenshot(full_page=full_page, animations="disabled", caret="hide")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        Path(SCREENSHOTS) / name, optimize=True)


def form_fields(request: Any) -> dict[str, list[str]]:
    """The fields of a multipart request the page sent: name -> values (file names for
    uploads)."""
    from email.parser import BytesParser
    from email.policy import default

    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = BytesParser(policy=default).parsebytes(head + (request.post_data_buffer or b""))
    fields: dict[str, list[str]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        value = filename if filename is not None else part.get_payload(decode=True).decode()
        fields.setdefault(str(name), []).append(value)
    return fields


def choose_examples(page: Any, content: str = "Neckarfront in Tübingen",
                    styles: tuple[str, ...] = ("The Starry Night",)) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name=f"Use example photo: {content}").click()
    expect(page.locator("#content-name")).to_contain_text(content)
    for style in styles:
        page.get_by_role("button", name=f"Style: {style}").click()
    expect(page.locator("#style-list li")).to_have_count(len(styles))


def set_size(page: Any, size: int, steps: int) -> None:
    page.get_by_label("Size (long side, px)").fill(str(size))
    page.get_by_label("Steps", exact=True).fill(str(steps))


def stylize_request(request: Any) -> bool:
    return request.method == "POST" and request.url.endswith("/stylize")
