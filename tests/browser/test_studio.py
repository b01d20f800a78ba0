"""The web studio and /docs in a real (Debian) Chromium, against the real server."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser.conftest import screenshot
from tests.conftest import LiveServer

DATA = Path(__file__).resolve().parent.parent / "data"


def test_generate_shows_a_gallery_with_seeds(page: Page) -> None:
    page.goto("/")
    expect(page.locator("#gen-model option")).to_have_count(1)
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Count").fill("4")
    page.get_by_role("button", name="Generate").click()
    images = page.locator("#gallery img")
    expect(images).to_have_count(4)
    expect(page.locator("#gallery .seed")).to_have_text(["seed 7", "seed 8", "seed 9", "seed 10"])
    assert images.first.evaluate("img => img.naturalWidth") == 64
    assert page.locator("#gallery a").first.get_attribute("download") == "face-7.png"
    screenshot(page, "studio-generate.png")

    page.locator("#gallery button", has_text="Use as content").first.click()
    expect(page.locator("#content-preview")).to_be_visible()


def test_the_dice_draws_a_new_seed_and_the_keyboard_can_generate(page: Page) -> None:
    page.goto("/")
    seed = page.get_by_label("Seed", exact=True)
    seed.fill("1")
    page.get_by_role("button", name="Random seed").click()
    assert seed.input_value() != "1"
    seed.fill("3")
    page.get_by_label("Count").fill("2")
    page.get_by_label("Count").focus()
    for _ in range(4):  # Tab through the remaining controls to the Generate button
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "gen-submit":
            break
    assert page.evaluate("document.activeElement.id") == "gen-submit"
    page.keyboard.press("Enter")
    expect(page.locator("#gallery img")).to_have_count(2)


def test_a_tiny_stylize_job_shows_progress_then_the_result(page: Page) -> None:
    page.goto("/")
    page.set_input_files("#content-file", DATA / "content.jpg")
    page.set_input_files("#style-files", [DATA / "starry.jpg", DATA / "wave.jpg"])
    expect(page.locator("#style-list li")).to_have_count(2)
    page.get_by_label("Size (long side, px)").fill("64")
    page.get_by_label("Steps").fill("6")
    page.get_by_label("Colour").select_option("luminance")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#st-status")).to_contain_text("step", timeout=30_000)
    expect(page.locator("#st-result")).to_be_visible(timeout=60_000)
    expect(page.locator("#st-status")).to_contain_text("step 6 of 6")
    expect(page.locator("#st-preview")).to_be_visible()
    assert page.locator("#st-progress").evaluate("p => p.value") == 1
    assert page.locator("#st-result").evaluate("img => img.naturalWidth") == 64
    expect(page.locator("#st-download")).to_be_visible()
    screenshot(page, "studio-stylize.png")


def test_a_running_job_can_be_cancelled(page: Page, studio_server: LiveServer) -> None:
    page.goto("/")
    page.set_input_files("#content-file", DATA / "content.jpg")
    page.set_input_files("#style-files", DATA / "starry.jpg")
    page.get_by_label("Size (long side, px)").fill("64")
    page.get_by_label("Steps").fill("2000")
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#st-status")).to_contain_text("running: step", timeout=30_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#st-status")).to_have_text("Canceled.", timeout=15_000)
    expect(page.locator("#st-result")).to_be_hidden()
    expect(page.get_by_role("button", name="Start")).to_be_enabled()


def test_an_oversized_upload_shows_a_readable_error(page: Page, tmp_path: Path) -> None:
    noise = Image.frombytes("RGB", (300, 300), random.Random(0).randbytes(300 * 300 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")  # ~270 KB, over the server's 150 KB limit
    big = tmp_path / "big.png"
    big.write_bytes(buffer.getvalue())
    page.goto("/")
    page.set_input_files("#content-file", big)
    page.set_input_files("#style-files", DATA / "starry.jpg")
    page.get_by_role("button", name="Start").click()
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible(timeout=15_000)
    expect(alert).to_contain_text("Content too large")
    expect(alert).to_contain_text("150000 bytes")


def test_the_studio_fits_a_phone_screen(page: Page) -> None:
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto("/")
    expect(page.get_by_role("button", name="Generate")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    for control in ("Seed", "Count", "Steps", "Optimizer"):
        expect(page.get_by_label(control, exact=True)).to_be_visible()
    screenshot(page, "studio-phone.png")


def test_docs_render_every_endpoint_offline(page: Page, studio_server: LiveServer) -> None:
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Atelier", timeout=20_000)
    schema = page.request.get(f"{studio_server.url}/openapi.json").json()
    expected = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    blocks = page.locator(".opblock")
    expect(blocks).to_have_count(len(expected))
    shown = {
        (block.locator(".opblock-summary-method").inner_text().strip(),
         block.locator(".opblock-summary-path").get_attribute("data-path"))
        for block in blocks.all()
    }
    assert shown == expected
    assert ("POST", "/stylize") in shown and ("GET", "/jobs/{job_id}/events") in shown
