"""The studio's style-transfer panel in a real (Debian) Chromium, against the real server:
what a new user does, at desktop and phone sizes."""

from __future__ import annotations

import io
import itertools
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from playwright.sync_api import expect

from app.main import create_app
from tests.browser.conftest import (
    MAX_UPLOAD,
    PHONE,
    PageFactory,
    choose_examples,
    form_fields,
    open_studio,
    screenshot,
    set_size,
    showcase,
    studio_settings,
    stylize_request,
)
from tests.conftest import LiveServer

TIMES = "\u00d7"  # the multiplication sign the page writes in sizes
DATA = Path(__file__).resolve().parent.parent / "data"
JOB_TIMEOUT = 60_000


def wait_done(page: Any) -> None:
    expect(page.locator("#st-chip")).to_have_text("succeeded", timeout=JOB_TIMEOUT)


def wait_running(page: Any) -> None:
    expect(page.locator("#st-state")).to_contain_text("Step", timeout=JOB_TIMEOUT)


def job_status(server: LiveServer, job_id: str) -> str:
    return str(httpx.get(f"{server.url}/jobs/{job_id}").json()["status"])


def test_an_example_job_shows_progress_then_a_large_result_to_compare_and_zoom(
        page: Any, tmp_path: Path) -> None:
    open_studio(page)
    # Before anything runs: an invitation, and no empty "Preview" caption.
    expect(page.locator("#st-empty")).to_be_visible()
    expect(page.locator("#st-caption")).to_be_hidden()
    expect(page.locator("#st-after")).to_be_hidden()
    choose_examples(page)
    size, steps = showcase(64, 192), showcase(6, 40)
    set_size(page, size, steps)
    with page.expect_request(stylize_request) as sent:
        page.get_by_role("button", name="Start").click()
    assert form_fields(sent.value)["preview_every"] == [str(max(1, round(steps / 10)))]
    wait_done(page)

    status = page.locator("#st-action-status")  # beside Start
    expect(status).to_contain_text(f"Done: {steps} steps in")
    summary = page.locator("#st-summary")
    expect(summary).to_have_text(re.compile(
        rf"^{steps} steps in \d+ s · {size} {TIMES} {size * 3 // 4} px · PNG · style strength 30$"))
    output = page.locator("#st-output").inner_text()
    assert "e+" not in output and "succeeded:" not in output  # no raw numbers or states

    # Large: the result fills the pane, far above its natural size.
    result = page.locator("#st-after")
    assert result.evaluate("img => img.naturalWidth") == size
    assert result.bounding_box()["width"] >= 700
    # Before/after: the divider starts in the middle; the slider moves it, keyboard too.
    compare = page.get_by_label("Compare: photo | painting")
    expect(compare).to_have_attribute("aria-valuetext", "50 % photo, 50 % result")
    assert result.evaluate("img => getComputedStyle(img).clipPath") == "inset(0px 0px 0px 50%)"
    compare.focus()
    page.keyboard.press("End")
    expect(compare).to_have_attribute("aria-valuetext", "100 % photo, 0 % result")
    assert result.evaluate("img => getComputedStyle(img).clipPath") == "inset(0px 0px 0px 100%)"
    page.keyboard.press("Home")
    assert result.evaluate("img => getComputedStyle(img).clipPath") == "inset(0px 0px 0px 0%)"
    page.locator("#st-compare").fill("50")
    # Zoom: 200 % and 100 % of the result's own pixels, then back to fit.
    stage = page.locator("#st-stage")
    page.get_by_role("button", name="200 %").click()
    expect(page.get_by_role("button", name="200 %")).to_have_attribute("aria-pressed", "true")
    assert stage.bounding_box()["width"] == pytest.approx(2 * size, abs=1)
    page.get_by_role("button", name="100 %").click()
    assert stage.bounding_box()["width"] == pytest.approx(size, abs=1)
    page.get_by_role("button", name="Fit").click()
    assert stage.bounding_box()["width"] >= 700
    # The losses are there, as plain numbers.
    page.get_by_text("Loss details").click()
    rows = page.locator("#st-loss-rows tr")
    expect(rows).to_have_count(4)
    assert all("e" not in row.split("\t")[-1] for row in rows.all_inner_texts())
    # Download: the result itself, under a name that says what it is.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename == "tubingen-starry_night.png"
    saved = tmp_path / "result.png"
    download.value.save_as(saved)
    assert Image.open(saved).size == (size, size * 3 // 4)
    screenshot(page, "studio-stylize.png", full_page=False)


def test_progress_shows_steps_and_time_left_and_cancel_frees_the_worker(
        page: Any, studio_server: LiveServer) -> None:
    open_studio(page)
    choose_examples(page)
    set_size(page, 64, 2000)
    with page.expect_response(lambda r: stylize_request(r.request)) as answer:
        page.get_by_role("button", name="Start").click()
    job_id = answer.value.headers["x-job-id"]
    wait_running(page)
    expect(page.locator("#st-state")).to_contain_text("left")  # an ETA
    expect(page.locator("#st-action-status")).to_contain_text("Running: step")
    expect(page.get_by_role("button", name="Start")).to_be_disabled()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#st-chip")).to_have_text("canceled", timeout=15_000)
    expect(page.locator("#st-state")).to_have_text("Canceled: the worker is free again.")
    expect(page.locator("#st-action-status")).to_have_text("Canceled.")
    expect(page.get_by_role("button", name="Start")).to_be_enabled()
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    assert job_status(studio_server, job_id) == "canceled"


def test_the_strength_and_blend_labels_are_the_values_sent(page: Any) -> None:
    open_studio(page)
    choose_examples(page, styles=("The Starry Night", "The Great Wave off Kanagawa"))
    strength = page.get_by_label("Style strength")
    label = page.locator("#st-strength-out")
    expect(label).to_have_text("30")  # the model's default, exactly
    strength.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    expect(label).to_have_text("100")
    expect(strength).to_have_attribute("aria-valuetext", "100")
    blend = page.get_by_label("Weight of The Starry Night")
    blend.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#blend-0-out")).to_have_text("0.70")
    expect(page.locator("#blend-1-out")).to_have_text("1.00")
    expect(blend).to_have_attribute("aria-valuetext", "0.70, 41 % of the style mix")
    set_size(page, 32, 2)
    with page.expect_request(stylize_request) as sent:
        page.get_by_role("button", name="Start").click()
    fields = form_fields(sent.value)
    assert fields["style_weight"] == [label.inner_text()]
    assert fields["style_blend"] == [
        f"{page.locator('#blend-0-out').inner_text()},{page.locator('#blend-1-out').inner_text()}"]
    assert fields["style"] == ["starry_night.jpg", "wave.jpg"]
    wait_done(page)
    expect(page.locator("#st-summary")).to_contain_text("style strength 100")


def test_advanced_options_reach_the_api(page: Any) -> None:
    open_studio(page)
    choose_examples(page, content="Chelsea the cat")
    set_size(page, 32, 3)
    page.get_by_text("Advanced options").click()
    page.get_by_label("Optimizer").select_option("adam")
    page.get_by_label("Start from").select_option("noise")
    page.get_by_label("Seed (empty: 0)").fill("7")
    page.get_by_label("Output format").select_option("webp")
    page.get_by_label("Content weight").fill("2")
    page.get_by_label("Smoothness (TV weight)").fill("0")
    page.get_by_label(f"Style scale ({TIMES} output size)").fill("1.5")
    page.get_by_label("Previews").select_option("0")
    page.get_by_label("Colours").select_option("luminance")
    with page.expect_request(stylize_request) as sent:
        page.get_by_role("button", name="Start").click()
    fields = form_fields(sent.value)
    assert {k: v[0] for k, v in fields.items() if k not in ("content", "style")} == {
        "size": "32", "steps": "3", "style_weight": "30", "optimizer": "adam", "init": "noise",
        "seed": "7", "format": "webp", "content_weight": "2", "tv_weight": "0",
        "style_scale": "1.5", "preserve_color": "luminance"}
    wait_done(page)
    expect(page.locator("#st-summary")).to_contain_text("WEBP")
    assert page.get_by_role("link", name="Download").get_attribute("download") == (
        "chelsea-starry_night.webp")


def noise_png(side: int) -> bytes:
    noise = Image.frombytes("RGB", (side, side), random.Random(0).randbytes(side * side * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    return buffer.getvalue()


def test_a_bad_upload_is_reported_next_to_its_control_and_in_view_on_a_phone(
        phone: Any, tmp_path: Path) -> None:
    open_studio(phone)
    content_error = phone.locator("#content-field").get_by_role("alert")
    # A damaged file: refused at once, beside the upload control, in view, announced.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 10)
    phone.set_input_files("#content-file", broken)
    expect(content_error).to_be_visible()
    expect(content_error).to_have_text(
        "broken.png could not be read as an image: the file may be damaged. Choose another file.")
    expect(content_error).to_be_in_viewport()
    # Too large for this server: said before uploading, with the limit in bytes.
    big = tmp_path / "big.png"
    big.write_bytes(noise_png(420))
    assert big.stat().st_size > MAX_UPLOAD
    phone.set_input_files("#content-file", big)
    expect(content_error).to_contain_text("big.png is too large to upload")
    expect(content_error).to_contain_text(f"({MAX_UPLOAD} bytes)")
    expect(content_error).to_be_in_viewport()
    # Refused by the server (too elongated for the size): the answer lands beside the
    # content control too, scrolled into view from the Start button far below it.
    thin = tmp_path / "thin.png"
    Image.new("RGB", (2000, 20), "white").save(thin)
    phone.set_input_files("#content-file", thin)
    expect(content_error).to_be_hidden()  # the new file replaced the old error
    phone.get_by_role("button", name="Style: The Scream").click()
    set_size(phone, 64, 2)
    start = phone.get_by_role("button", name="Start")
    start.scroll_into_view_if_needed()
    assert not content_error.is_visible()
    start.click()
    # The server decodes the upload first: allow for a loaded 2-core machine.
    expect(content_error).to_contain_text("too elongated", timeout=20_000)
    expect(content_error).to_be_in_viewport()
    expect(phone.locator("#content-pick")).to_have_attribute("aria-invalid", "true")
    assert phone.evaluate("document.activeElement.id") == "content-pick"
    expect(phone.locator("#st-action-status")).to_be_hidden()
    screenshot(phone, "studio-phone-error.png", full_page=False, top=False)


def test_statuses_are_cleared_when_they_no_longer_hold(page: Any) -> None:
    open_studio(page)
    page.get_by_role("button", name="Start").click()
    content_error = page.locator("#content-error")
    style_error = page.locator("#style-error")
    expect(content_error).to_have_text(
        "Choose a content image first: pick a file, an example, or paste one.")
    expect(style_error).to_contain_text("Add a style")
    page.get_by_role("button", name="Use example photo: A cup of coffee").click()
    expect(content_error).to_be_hidden()
    expect(style_error).to_be_visible()  # still true: no style yet
    page.get_by_role("button", name="Style: The Scream").click()
    expect(style_error).to_be_hidden()
    page.get_by_label("Size (long side, px)").fill("5000")
    page.get_by_role("button", name="Start").click()
    size_error = page.locator("#st-size-error")
    expect(size_error).to_contain_text("from 16 to 1024")
    set_size(page, 32, 2)
    expect(size_error).to_be_hidden()
    page.get_by_role("button", name="Start").click()
    wait_done(page)
    done = page.locator("#st-action-status")
    expect(done).to_contain_text("Done:")
    page.get_by_label("Steps", exact=True).fill("3")
    expect(done).to_be_hidden()  # it described the last run, not these settings
    expect(page.locator("#st-summary")).to_contain_text("2 steps")  # the shown result's own
    page.get_by_role("button", name="Copy as curl").click()
    curl = page.locator("#st-curl-status")
    expect(curl).to_be_visible()
    page.get_by_label("Colours").select_option("match")
    expect(curl).to_be_hidden()


def test_a_reload_mid_job_finds_the_job_again_and_can_cancel_it(
        page: Any, studio_server: LiveServer) -> None:
    open_studio(page)
    choose_examples(page, content="Astronaut Eileen Collins", styles=("The Scream",))
    set_size(page, 64, 2000)
    with page.expect_response(lambda r: stylize_request(r.request)) as answer:
        page.get_by_role("button", name="Start").click()
    job_id = answer.value.headers["x-job-id"]
    wait_running(page)
    expect(page.locator("#history-count")).to_have_attribute("data-count", "1")
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    expect(page.locator("#st-chip")).to_have_text("running")
    expect(page.locator("#content-name")).to_contain_text("Astronaut Eileen Collins")
    step = page.locator("#st-state")
    expect(step).to_have_text(re.compile(r"^Step \d+ of 2000"))
    first = int(step.inner_text().split()[1])
    expect(step).not_to_contain_text(f"Step {first} of")  # live again
    assert job_status(studio_server, job_id) == "running"
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#st-chip")).to_have_text("canceled", timeout=15_000)
    assert job_status(studio_server, job_id) == "canceled"
    page.get_by_role("tab", name="History").click()
    expect(page.locator("#history-list li").first).to_have_attribute("data-status", "canceled")


def test_a_job_that_ended_while_the_page_was_closed_shows_its_result_on_return(
        page: Any, studio_server: LiveServer) -> None:
    open_studio(page)
    choose_examples(page, content="A cup of coffee", styles=("The Starry Night",))
    set_size(page, 32, 60)
    with page.expect_response(lambda r: stylize_request(r.request)) as answer:
        page.get_by_role("button", name="Start").click()
    job_id = answer.value.headers["x-job-id"]
    wait_running(page)
    page.goto("about:blank")  # the tab is left while the job runs on
    deadline = time.monotonic() + JOB_TIMEOUT / 1000
    while job_status(studio_server, job_id) != "succeeded":
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)
    open_studio(page)
    expect(page.locator("#st-chip")).to_have_text("succeeded")
    expect(page.locator("#st-after")).to_be_visible()
    page.get_by_role("tab", name="History").click()
    entry = page.locator("#history-list li").first
    expect(entry).to_have_attribute("data-status", "succeeded")
    expect(entry.get_by_role("button", name="Re-run")).to_be_visible()
    expect(entry.get_by_role("button", name="Download")).to_be_visible()


def test_a_queued_job_shows_its_place_in_line(page: Any, studio_server: LiveServer) -> None:
    blocker = httpx.post(
        f"{studio_server.url}/stylize", headers={"Prefer": "respond-async"},
        files=[("content", ("c.jpg", (DATA / "content.jpg").read_bytes(), "image/jpeg")),
               ("style", ("s.jpg", (DATA / "starry.jpg").read_bytes(), "image/jpeg"))],
        data={"size": "64", "steps": "2000"}).json()["id"]
    try:
        open_studio(page)
        choose_examples(page)
        set_size(page, 32, 2)
        page.get_by_role("button", name="Start").click()
        expect(page.locator("#st-chip")).to_have_text("queued")
        expect(page.locator("#st-state")).to_contain_text("Queued: 1st in line")
        expect(page.locator("#st-action-status")).to_contain_text("Queued: 1st in line")
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator("#st-chip")).to_have_text("canceled")
    finally:
        httpx.delete(f"{studio_server.url}/jobs/{blocker}")


@pytest.fixture
def fresh_server(real_catalog: object, tmp_path: Path) -> Iterator[LiveServer]:
    with LiveServer(create_app(studio_settings(tmp_path / "jobs"))) as server:
        yield server


def test_time_estimates_come_from_the_servers_measured_step_rate(
        new_page: PageFactory, fresh_server: LiveServer) -> None:
    page = open_studio(new_page(server=fresh_server))
    estimate = page.locator("#st-estimate")
    expect(estimate).to_contain_text("no style job has run on this server yet")
    expect(page.locator(".preset .time")).to_have_count(0)
    choose_examples(page, content="A cup of coffee")
    set_size(page, 64, 8)
    page.get_by_role("button", name="Start").click()
    wait_done(page)
    expect(page.locator(".preset .time")).to_have_count(3)  # measured: refreshed after the job
    config = httpx.get(f"{fresh_server.url}/studio/config").json()["stylize"]
    assert config["rate"]["samples"] == 1
    for preset in config["presets"]:
        shown = float(page.locator(f".preset[data-preset={preset['id']}]").get_attribute(
            "data-seconds"))
        assert shown == pytest.approx(preset["seconds"], rel=1e-9)
    page.get_by_text("Draft", exact=True).click()
    expect(estimate).to_contain_text("Draft: about")
    expect(estimate).to_contain_text("measured from its last 1 job.")
    # The estimate follows the size: a quarter of the pixels, less time.
    fit = config["rate"]["lbfgs"]
    assert fit["per_px_s"] > 0


def test_copy_as_curl_gives_a_command_that_runs(new_page: PageFactory, tmp_path: Path) -> None:
    import shlex
    import shutil
    import subprocess

    page = open_studio(new_page(permissions=["clipboard-read", "clipboard-write"]))
    choose_examples(page, content="Chelsea the cat", styles=("The Great Wave off Kanagawa",))
    set_size(page, 32, 2)
    page.get_by_role("button", name="Copy as curl").click()
    expect(page.locator("#st-curl-status")).to_contain_text("Copied the curl command")
    command = page.evaluate("navigator.clipboard.readText()")
    assert "-F content=@chelsea.jpg" in command and "-F style=@wave.jpg" in command
    assert "-F size=32" in command and "-F steps=2" in command and "-F style_weight=30" in command
    assert "/studio/examples/chelsea.jpg" in command  # the examples are fetched first
    assert all(shlex.split(line.rstrip("\\")) for line in command.splitlines())
    if shutil.which("curl"):
        subprocess.run(["bash", "-ec", command], cwd=tmp_path, check=True, timeout=60)
        assert Image.open(tmp_path / "chelsea-wave.png").size == (32, 21)


def test_paste_an_image_from_the_clipboard(new_page: PageFactory) -> None:
    page = open_studio(new_page(permissions=["clipboard-read", "clipboard-write"]))
    # Ctrl+V anywhere on the panel: a paste event carrying an image file.
    page.evaluate("""async () => {
        const blob = await (await fetch('/studio/examples/coffee.jpg')).blob();
        const transfer = new DataTransfer();
        transfer.items.add(new File([blob], 'image.png', { type: 'image/jpeg' }));
        document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: transfer }));
    }""")
    expect(page.locator("#content-name")).to_contain_text(f"Pasted image · 512 {TIMES} 341 px")
    expect(page.locator("#content-thumb")).to_be_visible()
    # The Paste button of the styles: the Async Clipboard API.
    page.evaluate("""async () => {
        const thumb = await fetch('/studio/examples/wave-thumb.jpg');
        const bitmap = await createImageBitmap(await thumb.blob());
        const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
        canvas.getContext('2d').drawImage(bitmap, 0, 0);
        const png = await canvas.convertToBlob({ type: 'image/png' });
        await navigator.clipboard.write([new ClipboardItem({ 'image/png': png })]);
    }""")
    page.locator("#style-paste").click()
    expect(page.locator("#style-list li")).to_have_count(1)
    expect(page.locator("#style-list")).to_contain_text("Pasted image")


def test_dark_mode_follows_the_system_setting(new_page: PageFactory) -> None:
    def background(page: Any) -> tuple[int, ...]:
        rgb = page.evaluate("getComputedStyle(document.body).backgroundColor")
        return tuple(int(x) for x in rgb[rgb.index("(") + 1:-1].split(",")[:3])

    light = open_studio(new_page(color_scheme="light"))
    dark = open_studio(new_page(color_scheme="dark"))
    assert sum(background(light)) > 600 and sum(background(dark)) < 120
    text = dark.evaluate("getComputedStyle(document.querySelector('h1')).color")
    assert sum(int(x) for x in text[text.index("(") + 1:-1].split(",")[:3]) > 600
    choose_examples(dark, content="Chelsea the cat", styles=("The Starry Night",))
    set_size(dark, showcase(64, 160), showcase(4, 40))
    dark.get_by_role("button", name="Start").click()
    wait_done(dark)
    screenshot(dark, "studio-dark.png", full_page=False)


def test_tabs_and_the_keyboard_order_follow_the_layout(page: Any) -> None:
    open_studio(page)
    page.get_by_role("tab", name="Stylize").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Faces")).to_be_focused()
    expect(page.locator("#panel-faces")).to_be_visible()
    expect(page.locator("#panel-stylize")).to_be_hidden()
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="History")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("Home")
    expect(page.locator("#panel-stylize")).to_be_visible()
    # Tab from the tab list to Start: every stop lies below or right of the one before.
    choose_examples(page)
    page.get_by_role("tab", name="Stylize").focus()
    seen: list[tuple[str, float, float]] = []
    for _ in range(60):
        page.keyboard.press("Tab")
        info = page.evaluate("""() => { const e = document.activeElement;
            const r = e.getBoundingClientRect();
            return [e.id || e.textContent.trim().slice(0, 30), r.top + scrollY, r.left]; }""")
        seen.append(tuple(info))
        if info[0] == "st-start":
            break
    assert seen[-1][0] == "st-start", seen
    names = [name for name, _, _ in seen]
    for wanted in ("content-pick", "content-paste", "style-pick", "st-size", "st-steps",
                   "st-strength", "st-color"):
        assert wanted in names
    tops = [top for _name, top, _left in seen]
    assert all(b >= a - 120 for a, b in itertools.pairwise(tops)), seen


def test_the_studio_fits_a_phone_and_keeps_progress_beside_start(new_page: PageFactory) -> None:
    phone = open_studio(new_page(PHONE))
    for tab in ("Stylize", "Faces", "Latent walk", "History"):
        phone.get_by_role("tab", name=tab).click()
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"], tab
    phone.get_by_role("tab", name="Stylize").click()
    for control in ("Size (long side, px)", "Steps", "Style strength", "Colours"):
        expect(phone.get_by_label(control, exact=True)).to_be_visible()
    choose_examples(phone)
    set_size(phone, showcase(64, 128), showcase(6, 30))
    start = phone.get_by_role("button", name="Start")
    start.click()
    wait_done(phone)
    status = phone.locator("#st-action-status")
    expect(status).to_contain_text("Done:")
    expect(status).to_be_in_viewport()  # where the user is, not 1000 px away
    phone.get_by_role("link", name="See the result").click()
    expect(phone.locator("#st-after")).to_be_in_viewport()
    screenshot(phone, "studio-phone.png")
