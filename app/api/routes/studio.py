"""The web studio: a single page and its assets, served from the package (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"

router = APIRouter(include_in_schema=False)
assets = StaticFiles(directory=WEB_DIR)


@router.get("/")
async def studio() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")
