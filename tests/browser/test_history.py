"""The studio's history: this browser's jobs and generations, kept across reloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image
from playwright.sync_api import expect

from tests.browser.conftest import choose_examples, open_studio, screenshot, set_size, showcase

TIMES = "\u00d7"  # the multiplication sign the page writes in sizes


def test_the_history_keeps_results_across_a_reload_and_reruns_them(
        page: Any, tmp_path: Path) -> None:
    open_studio(page, "faces")
    page.get_by_label("Seed", exact=True).fill("11")
    page.get_by_label("Count").fill("2")
    page.get_by_role("button", name="Generate").click()
    expect(page.locator("#gallery img")).to_have_count(2)
    page.get_by_role("tab", name="Latent walk").click()
    page.get_by_label("Frames").fill("3")
    page.get_by_role("button", name="Make the walk").click()
    expect(page.locator("#walk-image")).to_be_visible()
    page.get_by_role("tab", name="Stylize").click()
    choose_examples(page, content="Astronaut Eileen Collins", styles=("The Scream",))
    set_size(page, showcase(48, 160), showcase(3, 40))
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#st-chip")).to_have_text("succeeded", timeout=60_000)
    count = page.locator("#history-count")
    expect(count).to_have_attribute("data-count", "3")

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_role("tab", name="History").click()
    entries = page.locator("#history-list li")
    expect(entries).to_have_count(3)
    expect(entries.nth(0)).to_contain_text(
        f"Style transfer: Astronaut Eileen Collins {TIMES} The Scream")
    expect(entries.nth(0)).to_contain_text("Done")
    expect(entries.nth(1)).to_contain_text("Latent walk: Walk from seed 1 to 2")
    expect(entries.nth(2)).to_contain_text("Faces: 2 faces, seeds 11 to 12")
    for thumb in entries.locator("img.thumb").all():
        assert thumb.evaluate("img => img.complete && img.naturalWidth > 0")
    screenshot(page, "studio-history.png", full_page=False)

    # Download straight from the history: the stored result, not a server round trip.
    with page.expect_download() as download:
        entries.nth(0).get_by_role("button", name="Download").click()
    assert download.value.suggested_filename == "astronaut-the_scream.png"
    download.value.save_as(tmp_path / "result.png")
    assert max(Image.open(tmp_path / "result.png").size) == showcase(48, 160)
    with page.expect_download() as grid:
        entries.nth(2).get_by_role("button", name="Download").click()
    grid.value.save_as(tmp_path / "grid.png")
    assert Image.open(tmp_path / "grid.png").size == (128, 64)

    # Open puts a result back in its panel, with its inputs.
    entries.nth(0).get_by_role("button", name="Open").click()
    expect(page.locator("#panel-stylize")).to_be_visible()
    expect(page.locator("#st-after")).to_be_visible()
    expect(page.locator("#content-name")).to_contain_text("Astronaut Eileen Collins")
    expect(page.locator("#st-compare-field")).to_be_visible()

    # Re-run repeats a generation with its settings, as a new entry.
    page.get_by_role("tab", name="History").click()
    with page.expect_request(lambda r: r.url.endswith("/generate")) as sent:
        entries.nth(2).get_by_role("button", name="Re-run").click()
    assert '"seed":11' in sent.value.post_data.replace(" ", "")
    expect(page.locator("#panel-faces")).to_be_visible()
    expect(page.locator("#gallery .seed")).to_have_text(["seed 11", "seed 12"])
    expect(count).to_have_attribute("data-count", "4")

    # Delete removes one entry.
    page.get_by_role("tab", name="History").click()
    entries.nth(1).get_by_role("button", name="Delete").click()
    expect(count).to_have_attribute("data-count", "3")


def test_rerunning_a_style_job_uploads_the_same_images_again(page: Any) -> None:
    open_studio(page)
    choose_examples(page, content="A cup of coffee", styles=("The Starry Night",))
    set_size(page, 32, 2)
    page.get_by_role("button", name="Start").click()
    expect(page.locator("#st-chip")).to_have_text("succeeded", timeout=60_000)
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_role("tab", name="History").click()
    with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/stylize")) as sent:
        page.locator("#history-list li").first.get_by_role("button", name="Re-run").click()
    body = sent.value.post_data_buffer
    assert b'filename="coffee.jpg"' in body and b'filename="starry_night.jpg"' in body
    expect(page.locator("#st-chip")).to_have_text("succeeded", timeout=60_000)
    expect(page.locator("#history-count")).to_have_attribute("data-count", "2")
