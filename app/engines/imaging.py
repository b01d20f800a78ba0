"""Encoding uint8 images (PNG, JPEG, WebP), grids and animations with Pillow."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from enum import StrEnum

import torch
from PIL import Image


class ImageFormat(StrEnum):
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    GIF = "gif"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


def to_pil(image: torch.Tensor) -> Image.Image:
    """uint8 [H, W, C] to a Pillow image."""
    return Image.fromarray(image.numpy())


def encode(image: Image.Image | torch.Tensor, fmt: ImageFormat) -> bytes:
    pil = to_pil(image) if isinstance(image, torch.Tensor) else image
    buffer = io.BytesIO()
    if fmt is ImageFormat.JPEG:
        pil.convert("RGB").save(buffer, "JPEG", quality=90)
    elif fmt is ImageFormat.WEBP:
        pil.save(buffer, "WEBP", quality=90, method=4)
    elif fmt is ImageFormat.PNG:
        # Level 1 is several times faster than the default and barely larger for photos.
        pil.save(buffer, "PNG", compress_level=1)
    else:
        pil.save(buffer, fmt.value.upper())
    return buffer.getvalue()


def grid(images: torch.Tensor, columns: int | None = None, padding: int = 2) -> torch.Tensor:
    """uint8 [N, H, W, C] to one uint8 [H', W', C] mosaic, near-square by default."""
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    canvas = torch.zeros(
        (rows * h + (rows + 1) * padding, columns * w + (columns + 1) * padding, c),
        dtype=torch.uint8,
    )
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        canvas[y : y + h, x : x + w] = image
    return canvas


def animate(frames: Sequence[torch.Tensor], fmt: ImageFormat, frame_ms: int) -> bytes:
    """An animated WebP or GIF that loops forever."""
    pils = [to_pil(f) for f in frames]
    buffer = io.BytesIO()
    options: dict[str, object] = {"save_all": True, "append_images": pils[1:],
                                  "duration": frame_ms, "loop": 0}
    if fmt is ImageFormat.WEBP:
        options.update(quality=85, method=4)
    pils[0].save(buffer, fmt.value.upper(), **options)
    return buffer.getvalue()
