"""The studio's Faces and Latent walk panels in Chromium, against the real server."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from app.settings import PROJECT_ROOT
from tests.browser.conftest import PHONE, PageFactory, open_studio, screenshot

TIMES = "\u00d7"  # the multiplication sign the page writes in sizes
MANIFEST = tomllib.loads((PROJECT_ROOT / "models" / "dcgan-faces-64.toml").read_text())
DEFAULTS = MANIFEST["defaults"]


def generate_request(request: Any) -> bool:
    return request.method == "POST" and request.url.endswith("/generate")


def test_faces_show_large_with_seeds_and_the_manifests_truncation(page: Any) -> None:
    open_studio(page, "faces")
    truncation = page.locator("#panel-faces").get_by_label("Truncation (empty: none)")
    low, high = DEFAULTS["truncation_range"]
    # The hint and the default come from the model's manifest, not from a guess.
    expect(truncation).to_have_value(f"{DEFAULTS['truncation']:.1f}")
    expect(page.locator("#gen-truncation-help")).to_contain_text(
        f"Sensible range {low:g} to {high:g}")
    page.get_by_label("Seed", exact=True).fill("7")
    page.get_by_label("Count").fill("4")
    with page.expect_request(generate_request) as sent:
        page.get_by_role("button", name="Generate").click()
    assert json.loads(sent.value.post_data) == {
        "model": "dcgan-faces-64", "n": 4, "seed": 7, "truncation": DEFAULTS["truncation"]}
    images = page.locator("#gallery img")
    expect(images).to_have_count(4)
    expect(page.locator("#gallery .seed")).to_have_text(["seed 7", "seed 8", "seed 9", "seed 10"])
    assert images.first.evaluate("img => img.naturalWidth") == 64
    assert images.first.bounding_box()["width"] >= 128  # enlarged, not at 64 CSS px
    first_download = page.get_by_role("link", name="Download face, seed 7")
    assert first_download.get_attribute("download") == "face-7.png"
    expect(page.locator("#gen-action-status")).to_contain_text("4 faces in")
    screenshot(page, "studio-faces.png", full_page=False)

    # A value the measurement says is poor is flagged at once; an empty one means none.
    truncation.fill(str(low - 0.8))
    expect(page.locator("#gen-truncation-note")).to_contain_text("mush")
    expect(page.locator("#gen-action-status")).to_be_hidden()  # no longer these settings
    truncation.fill("")
    expect(page.locator("#gen-truncation-note")).to_be_hidden()

    # Open one large; take it to the style panel.
    page.get_by_role("button", name="Open face, seed 8").click()
    dialog = page.get_by_role("dialog", name="Face, seed 8")
    expect(dialog).to_be_visible()
    assert page.locator("#face-big").bounding_box()["width"] >= 300
    dialog.get_by_role("button", name="Stylize it").click()
    expect(page.locator("#panel-stylize")).to_be_visible()
    expect(page.locator("#content-name")).to_contain_text(f"Face, seed 8 · 64 {TIMES} 64 px")


def test_the_dice_draws_a_new_seed_and_the_keyboard_can_generate(page: Any) -> None:
    open_studio(page, "faces")
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


def test_face_errors_sit_beside_their_field(new_page: PageFactory) -> None:
    phone = open_studio(new_page(PHONE), "faces")
    phone.get_by_label("Count").fill("500")
    phone.get_by_role("button", name="Generate").click()
    error = phone.locator("#gen-n-error")
    expect(error).to_have_text("Count must be a whole number from 1 to 64.")
    expect(error).to_be_in_viewport()
    expect(phone.get_by_label("Count")).to_have_attribute("aria-invalid", "true")
    phone.get_by_label("Count").fill("2")
    expect(error).to_be_hidden()
    expect(phone.get_by_label("Count")).not_to_have_attribute("aria-invalid", "true")


@pytest.mark.parametrize(("fmt", "media_type"), [("webp", "image/webp"), ("png", "image/png")])
def test_a_latent_walk_shows_large_and_downloads(page: Any, fmt: str, media_type: str,
                                                 tmp_path: Path) -> None:
    walk = open_studio(page, "walk").locator("#panel-walk")
    walk.get_by_label("From seed").fill("3")
    walk.get_by_label("To seed").fill("9")
    walk.get_by_label("Frames").fill("4")
    walk.get_by_label("Format").select_option(fmt)
    with page.expect_response(lambda r: r.url.endswith("/generate/interpolate")) as answer:
        page.get_by_role("button", name="Make the walk").click()
    assert answer.value.headers["content-type"] == media_type
    assert json.loads(answer.value.request.post_data)["truncation"] == DEFAULTS["truncation"]
    image = page.locator("#walk-image")
    expect(image).to_be_visible()
    natural = image.evaluate("img => img.naturalWidth")
    assert natural == 64 if fmt == "webp" else natural >= 128  # a frame, or a 2x2 grid of them
    assert image.bounding_box()["width"] >= 256
    expect(page.locator("#walk-caption")).to_contain_text("4 frames")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download").click()
    assert download.value.suggested_filename == f"walk-3-9.{fmt}"
    if fmt == "webp":
        screenshot(page, "studio-walk.png", full_page=False)


def test_a_walk_can_start_from_a_generated_face(page: Any) -> None:
    open_studio(page, "faces")
    page.get_by_label("Seed", exact=True).fill("20")
    page.get_by_label("Count").fill("2")
    page.get_by_role("button", name="Generate").click()
    page.get_by_role("button", name="Open face, seed 21").click()
    page.get_by_role("button", name="Walk from here").click()
    expect(page.locator("#panel-walk")).to_be_visible()
    expect(page.get_by_label("From seed")).to_have_value("21")
    expect(page.get_by_label("From seed")).to_be_focused()
