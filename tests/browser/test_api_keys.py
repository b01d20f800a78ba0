"""The studio with API keys on (`ATELIER_API_KEYS`): a key field, its messages, the key sent
with every call (the job's event stream included, which EventSource could not do), kept in
the tab unless remembered, and the history's jobs of another key."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from app.api.security import key_id
from app.main import create_app
from tests.browser.conftest import (
    PHONE,
    PageFactory,
    choose_examples,
    open_studio,
    set_size,
    studio_settings,
    stylize_request,
)
from tests.conftest import LiveServer

KEY = "studio-key-0123456789abcdef"
OTHER_KEY = "other-key-fedcba9876543210"
KEY_ITEM = "atelier-api-key"  # the storage item the page keeps the key under
JOB_TIMEOUT = 60_000
ACCEPTED = "Key accepted for this tab."


@pytest.fixture(scope="module")
def keyed_server(real_catalog: object, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[LiveServer]:
    settings = studio_settings(tmp_path_factory.mktemp("keyed-jobs"),
                               api_keys=f"{KEY},{OTHER_KEY}")
    with LiveServer(create_app(settings)) as server:
        yield server


def stored(page: Any) -> dict[str, str | None]:
    return page.evaluate(f"""() => ({{
        session: sessionStorage.getItem({KEY_ITEM!r}),
        local: localStorage.getItem({KEY_ITEM!r}) }})""")


def use_key(page: Any, key: str, message: str = ACCEPTED) -> None:
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Use key").click()
    expect(page.locator("#key-message")).to_have_text(message)


class Traffic:
    """Every request a page sends (URL and Authorization), and what it logs."""

    def __init__(self, page: Any) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.logged: list[str] = []
        page.on("request", lambda r: self.requests.append(
            (r.url, r.headers.get("authorization"))))
        page.on("console", lambda m: self.logged.append(m.text))

    def to(self, pattern: str) -> list[str | None]:
        return [auth for url, auth in self.requests if re.search(pattern, url)]


def test_with_keys_on_the_studio_asks_for_a_key_says_why_a_call_failed_then_works(
        new_page: PageFactory, keyed_server: LiveServer) -> None:
    page = new_page(server=keyed_server)
    traffic = Traffic(page)
    open_studio(page)
    field = page.get_by_label("API key", exact=True)
    expect(field).to_be_visible()
    expect(field).to_have_attribute("type", "password")
    expect(page.locator("#key-help")).to_contain_text("kept in this tab until you close it")
    message = page.locator("#key-message")
    expect(message).to_have_attribute("aria-live", "polite")
    expect(message).to_be_hidden()  # nothing failed yet

    # No key yet: the examples (public) load, Start is answered 401, and the page says why,
    # beside the key field and beside Start.
    choose_examples(page)
    set_size(page, 32, 4)
    page.get_by_role("button", name="Start").click()
    expect(message).to_have_text("This server needs an API key: enter yours here, then try again.")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#st-action-error")).to_contain_text("This server needs an API key")

    # A wrong key: refused.
    use_key(page, "not-the-key", "The server refused this API key: check it (keys are"
                                 " case-sensitive) and enter it again.")
    expect(field).to_have_attribute("aria-invalid", "true")

    # The right key: a tiny job runs to its end, with its progress, and its result shows.
    use_key(page, KEY)
    expect(field).not_to_have_attribute("aria-invalid", "true")
    page.evaluate("""() => {  // every text the job's state line shows, however fast
        window.seenStates = [];
        new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach(
            (n) => window.seenStates.push(n.textContent))))
          .observe(document.getElementById('st-state'), { childList: true });
    }""")
    with page.expect_response(lambda r: stylize_request(r.request)) as answer:
        page.get_by_role("button", name="Start").click()
    assert answer.value.status == 202
    expect(page.locator("#st-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
    result = page.locator("#st-after")
    expect(result).to_be_visible()
    assert result.evaluate("img => img.complete && img.naturalWidth") == 32
    expect(page.locator("#st-action-status")).to_contain_text("Done: 4 steps in")
    states = page.evaluate("window.seenStates")
    assert any(re.fullmatch(r"Step \d of 4.*", state) for state in states), states

    # Every call of the API carried the key: the upload, the event stream (which an
    # EventSource could not have done), the result. It never went in a URL or a log.
    bearer = f"Bearer {KEY}"
    assert traffic.to(r"/stylize$")[-1] == bearer
    # Job ids are URL-safe base64: letters, digits, "_" and "-".
    streams = traffic.to(r"/jobs/[\w-]+/events$")
    assert streams and set(streams) == {bearer}
    assert set(traffic.to(r"/jobs/[\w-]+/result$")) == {bearer}
    assert not any(KEY in url for url, _ in traffic.requests)
    assert not any(KEY in line for line in traffic.logged)
    # Kept in this tab only; the history knows the job's key by its id (as the server logs
    # it), not by the key.
    assert stored(page) == {"session": KEY, "local": None}
    entries = page.evaluate("""async () => JSON.stringify(
        await (await import('/studio/store.js')).all())""")
    assert KEY not in entries
    assert [e["keyTag"] for e in json.loads(entries)] == [key_id(KEY)]

    # Copy as curl: the key comes from the environment, never onto the clipboard.
    page.get_by_role("button", name="Copy as curl").click()
    command = page.locator("#st-curl-status pre").text_content()
    assert '-H "Authorization: Bearer $ATELIER_API_KEY"' in command and KEY not in command
    expect(page.locator("#st-curl-status")).to_contain_text("Set ATELIER_API_KEY")


def test_a_dropped_event_stream_reconnects_with_the_key_and_last_event_id(
        new_page: PageFactory, keyed_server: LiveServer) -> None:
    page = open_studio(new_page(server=keyed_server))
    use_key(page, KEY)
    asked: list[tuple[str | None, str | None]] = []

    def cut_the_first_short(route: Any) -> None:
        headers = route.request.headers
        asked.append((headers.get("last-event-id"), headers.get("authorization")))
        if len(asked) == 1:  # a keep-alive, one event, then the connection ends
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                          body=": ping\n\nid: 1\nevent: hello\ndata: {}\n\n")
        else:
            route.continue_()

    page.route("**/jobs/*/events", cut_the_first_short)
    choose_examples(page, content="A cup of coffee")
    set_size(page, 32, 3)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#st-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT)
    expect(page.locator("#st-after")).to_be_visible()
    assert asked[:2] == [(None, f"Bearer {KEY}"), ("1", f"Bearer {KEY}")]


def test_the_key_stays_in_the_tab_unless_remembered_and_can_be_forgotten(
        new_page: PageFactory, keyed_server: LiveServer) -> None:
    page = open_studio(new_page(server=keyed_server))
    remember = page.get_by_label("Remember on this device")
    expect(remember).not_to_be_checked()
    use_key(page, KEY)
    assert stored(page) == {"session": KEY, "local": None}
    # A reload keeps it (same tab), a new tab does not have it.
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_label("API key", exact=True)).to_have_value(KEY)
    other_tab = open_studio(page.context.new_page())
    expect(other_tab.get_by_label("API key", exact=True)).to_have_value("")
    # Remember: moved to localStorage, so the other tab has it once reloaded.
    remember.check()
    expect(page.locator("#key-message")).to_contain_text("remembered on this device")
    assert stored(page) == {"session": None, "local": KEY}
    other_tab.reload()
    other_tab.wait_for_selector("body[data-ready=true]")
    expect(other_tab.get_by_label("API key", exact=True)).to_have_value(KEY)
    expect(other_tab.get_by_label("Remember on this device")).to_be_checked()
    # Unticked: back to this tab only.
    remember.uncheck()
    expect(page.locator("#key-message")).to_have_text("The key is kept in this tab only.")
    assert stored(page) == {"session": KEY, "local": None}
    # Forget: gone from both, and the field is empty.
    remember.check()
    page.get_by_role("button", name="Forget key").click()
    expect(page.locator("#key-message")).to_have_text(
        "Key forgotten: this browser no longer keeps it.")
    assert stored(page) == {"session": None, "local": None}
    expect(page.get_by_label("API key", exact=True)).to_have_value("")
    expect(page.get_by_role("button", name="Forget key")).to_be_disabled()


def test_the_key_field_fits_a_phone(new_page: PageFactory, keyed_server: LiveServer) -> None:
    phone = open_studio(new_page(PHONE, server=keyed_server))
    expect(phone.get_by_label("API key", exact=True)).to_be_in_viewport()
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    use_key(phone, OTHER_KEY)
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


def test_the_history_marks_a_job_of_another_key_instead_of_losing_it(
        new_page: PageFactory, keyed_server: LiveServer) -> None:
    page = new_page(server=keyed_server)
    traffic = Traffic(page)
    open_studio(page)
    use_key(page, KEY)
    choose_examples(page, content="A cup of coffee", styles=("The Scream",))
    set_size(page, 64, 2000)
    with page.expect_response(lambda r: stylize_request(r.request)) as answer:
        page.get_by_role("button", name="Start").click()
    job_id = answer.value.headers["x-job-id"]
    expect(page.locator("#st-state")).to_contain_text("Step", timeout=JOB_TIMEOUT)
    try:
        # Another key in this tab: the server shows it nothing of that job (404), so the page
        # neither asks nor calls the job expired; it says whose job it is.
        use_key(page, OTHER_KEY)
        traffic.requests.clear()
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        page.get_by_role("tab", name="History").click()
        entry = page.locator("#history-list li").first
        expect(entry).to_have_attribute("data-key", "other")
        expect(entry).to_have_attribute("data-status", "running")
        expect(entry).to_contain_text("made with another API key")
        expect(entry).to_contain_text("use that key to follow or cancel this one")
        expect(entry.get_by_role("button", name="Cancel")).to_have_count(0)
        assert traffic.to(rf"/jobs/{job_id}") == []  # not asked with the other key
        expect(page.locator("#st-chip")).to_be_hidden()
        # Its own key again: the job is followed again, and can be canceled.
        use_key(page, KEY)
        expect(entry).not_to_have_attribute("data-key", "other")
        expect(page.locator("#st-chip")).to_have_text("running")
        page.get_by_role("tab", name="Stylize").click()
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#st-chip")).to_have_text("canceled", timeout=15_000)
    finally:
        httpx.delete(f"{keyed_server.url}/jobs/{job_id}",
                     headers={"Authorization": f"Bearer {KEY}"}, timeout=30)


def test_with_keys_off_there_is_no_key_field_and_no_key_is_sent(
        new_page: PageFactory, studio_server: LiveServer) -> None:
    assert httpx.get(f"{studio_server.url}/studio/config").json()["auth"] == {
        "api_keys": False}
    page = new_page()
    # A key left in this browser by another server on this origin is not sent here.
    page.add_init_script(f"sessionStorage.setItem({KEY_ITEM!r}, {KEY!r})")
    traffic = Traffic(page)
    open_studio(page, "faces")
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.get_by_label("API key", exact=True)).to_be_hidden()
    page.get_by_label("Count").fill("1")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#gallery img")).to_have_count(1)
    assert traffic.to(r"/generate$") == [None]


def test_the_key_id_is_the_one_the_server_logs(page: Any, studio_server: LiveServer) -> None:
    """The history records which key made a job by the key's id (SHA-256, first 12 hex
    digits, computed in the page without crypto.subtle), never by the key."""
    open_studio(page)
    for text in ("", "abc", KEY, "x" * 55, "x" * 56, "y" * 200):
        digest = page.evaluate(
            "async (text) => (await import('/studio/lib.js')).sha256Hex(text)", text)
        assert digest == hashlib.sha256(text.encode()).hexdigest(), len(text)
