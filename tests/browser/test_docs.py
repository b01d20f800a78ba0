"""/docs (Swagger UI, served offline by the app): every operation renders, offers Try it out,
and the two main ones run from it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from tests.conftest import LiveServer

DATA = Path(__file__).resolve().parent.parent / "data"


def open_docs(page: Any) -> None:
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Atelier", timeout=20_000)


def operation(page: Any, method: str, path: str) -> Any:
    block = page.locator(".opblock").filter(
        has=page.locator(f".opblock-summary-path[data-path='{path}']")).filter(
        has=page.locator(".opblock-summary-method", has_text=method.upper()))
    expect(block).to_have_count(1)
    return block


def expand(block: Any) -> None:
    block.locator(".opblock-summary").first.click()
    expect(block.locator(".opblock-body")).to_be_visible()


def executed_status(block: Any) -> Any:
    return block.locator(".live-responses-table .response .response-col_status").first


def test_every_operation_renders_and_offers_try_it_out(page: Any, studio_server: LiveServer
                                                       ) -> None:
    open_docs(page)
    schema = page.request.get(f"{studio_server.url}/openapi.json").json()
    expected = [(method, path) for path, ops in schema["paths"].items() for method in ops]
    expect(page.locator(".opblock")).to_have_count(len(expected))
    for method, path in expected:
        block = operation(page, method, path)
        expand(block)
        body = block.locator(".opblock-body")
        expect(body.get_by_text("Could not render")).to_have_count(0)
        expect(body.locator(".errors-wrapper")).to_have_count(0)
        expect(body.get_by_role("button", name="Try it out")).to_be_visible()
        if path != "/stylize":
            continue
        # Every field of the form can be given, files included.
        body.get_by_role("button", name="Try it out").click()
        for field in ("content", "style"):
            row = body.locator(f"tr[data-property-name='{field}']")
            expect(row.locator("input[type=file]"), f"{field} has no file input").to_have_count(1)
    expect(page.get_by_text("Could not render")).to_have_count(0)


def test_try_it_out_runs_generate(page: Any) -> None:
    open_docs(page)
    block = operation(page, "post", "/generate")
    expand(block)
    block.get_by_role("button", name="Try it out").click()
    body = block.locator("textarea.body-param__text")
    body.fill('{"n": 2, "seed": 5}')
    block.get_by_role("button", name="Execute").click()
    expect(executed_status(block)).to_have_text("200", timeout=30_000)
    expect(block.locator(".live-responses-table")).to_contain_text("image/png")
    expect(block.locator(".live-responses-table img")).to_have_count(1)


def test_try_it_out_runs_a_small_stylize(page: Any) -> None:
    open_docs(page)
    block = operation(page, "post", "/stylize")
    expand(block)
    block.get_by_role("button", name="Try it out").click()

    def row(name: str) -> Any:
        return block.locator(f"tr[data-property-name='{name}']")

    row("steps").locator("input[type=text]").fill("2")
    row("size").locator("input[type=text]").fill("32")
    row("preview_every").locator("input[type=text]").fill("0")
    blend = row("style_blend")
    while blend.locator("button.json-schema-form-item-remove").count() > 1:
        blend.locator("button.json-schema-form-item-remove").first.click()
    blend.locator("input[type=text]").fill("1")
    row("content").locator("input[type=file]").set_input_files(DATA / "content.jpg")
    style = row("style").locator("input[type=file]")
    expect(style, "the style field of /stylize has no file input in /docs: its items need "
                  "`format: binary` in the OpenAPI schema").to_have_count(1)
    style.set_input_files(DATA / "starry.jpg")
    block.get_by_role("button", name="Execute").click()
    expect(executed_status(block)).to_have_text("200", timeout=60_000)
    expect(block.locator(".live-responses-table")).to_contain_text("image/png")
