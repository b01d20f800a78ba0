"""The ceiling for /generate: the same HTTP stack answering with a pre-encoded 64x64 PNG.

Same framework, server, JSON body model and response headers as the service; no pool, no
model, no encoding. The service's requests/s divided by this one's is the bench's ratio.
"""

from __future__ import annotations

import io
import sys
from typing import Annotated

import uvicorn
from fastapi import Body, FastAPI, Response
from PIL import Image

from app.services.params import GenerateRequest

app = FastAPI()
_buffer = io.BytesIO()
Image.effect_noise((64, 64), 60).convert("RGB").save(_buffer, "PNG", compress_level=1)
PNG = _buffer.getvalue()


@app.post("/generate")
async def generate(body: Annotated[GenerateRequest | None, Body()] = None) -> Response:
    return Response(PNG, media_type="image/png", headers={"X-Seed": "0", "X-Model": "bare"})


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False,
                log_level="warning")
