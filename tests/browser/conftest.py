from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from app.main import create_app
from tests.conftest import LiveServer, make_settings

CHROMIUM = Path(os.environ.get("ATELIER_CHROMIUM", "/usr/bin/chromium"))
# Chromium flags for a closed machine: no background calls home, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


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
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def studio_server(real_catalog: object, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[LiveServer]:
    settings = make_settings(jobs_dir=tmp_path_factory.mktemp("jobs"),
                             max_upload_bytes=150_000, progress_every=1)
    with LiveServer(create_app(settings)) as server:
        yield server


class Offline:
    """Lets a page reach loopback only, and records what else it tried."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def __call__(self, route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        host = urlsplit(url).hostname
        if url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            route.continue_()  # type: ignore[attr-defined]
        else:
            self.blocked.append(url)
            route.abort()  # type: ignore[attr-defined]


@pytest.fixture
def page(browser: object, studio_server: LiveServer) -> Iterator[object]:
    context = browser.new_context(base_url=studio_server.url,  # type: ignore[attr-defined]
                                  viewport={"width": 1200, "height": 900})
    offline = Offline()
    context.route("**/*", offline)
    page = context.new_page()
    page.offline = offline  # type: ignore[attr-defined]
    yield page
    context.close()
    assert offline.blocked == [], f"the page tried to leave loopback: {offline.blocked}"


def screenshot(page: object, name: str) -> None:
    """Saved under $ATELIER_SCREENSHOTS (e.g. docs/screenshots) when it is set."""
    folder = os.environ.get("ATELIER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / name), full_page=True)  # type: ignore[attr-defined]
