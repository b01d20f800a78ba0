"""Encoding uint8 images (PNG, JPEG, WebP), grids and animations with Pillow."""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence
from enum import StrEnum

import numpy as np
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
    if fmt is ImageFormat.PNG:
        pixels = _png_pixels(image)
        if pixels is not None:
            return png(pixels)
    pil = to_pil(image) if isinstance(image, torch.Tensor) else image
    buffer = io.BytesIO()
    if fmt is ImageFormat.JPEG:
        pil.convert("RGB").save(buffer, "JPEG", quality=90)
    elif fmt is ImageFormat.WEBP:
        pil.save(buffer, "WEBP", quality=90, method=4)
    elif fmt is ImageFormat.PNG:
        pil.save(buffer, "PNG", compress_level=1)
    else:
        pil.save(buffer, fmt.value.upper())
    return buffer.getvalue()


# PNG colour type by channel count: grey, grey + alpha, RGB, RGBA.
_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
_PNG_MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


def _png_pixels(image: Image.Image | torch.Tensor) -> np.ndarray | None:
    """uint8 [H, W, C] pixels that `png` can write, or None (Pillow writes the rest)."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8 or image.dim() not in (2, 3) or image.device.type != "cpu":
            return None
        pixels = image.numpy()
    elif image.mode in _PNG_MODES:
        pixels = np.asarray(image)
    else:
        return None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] not in _PNG_COLOUR_TYPES or 0 in pixels.shape:
        return None
    return pixels


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + tag + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag))))


def png(pixels: np.ndarray, *, strategy: int = zlib.Z_RLE) -> bytes:
    """A PNG of uint8 pixels [H, W, C], C = 1 to 4 (grey, grey + alpha, RGB, RGBA).

    Every row is "Up"-filtered (its difference from the row above) and deflated at level 1
    with zlib's run-length strategy: after the Up filter most of what repeats is runs, and
    looking for them alone is faster than zlib's default search: on GAN faces 0.70x the
    time and 3% smaller, on style results 0.46x and the same size; smooth photographs come
    out up to ~15% larger (`bench/png.py` compares them and Pillow; the decoded pixels are
    the same). `strategy` is there for that comparison.
    """
    height, width, channels = pixels.shape
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    filtered = np.empty((height, width * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up
    filtered[:, 1:] = rows
    np.subtract(filtered[1:, 1:], rows[:-1], out=filtered[1:, 1:])  # wraps modulo 256
    header = struct.pack(">IIBBBBB", width, height, 8, _PNG_COLOUR_TYPES[channels], 0, 0, 0)
    compressor = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS, 8, strategy)
    return b"".join((
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", header),
        _png_chunk(b"IDAT", compressor.compress(filtered.data) + compressor.flush()),
        _png_chunk(b"IEND", b""),
    ))


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
