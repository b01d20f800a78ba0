"""Decoding uploads: formats, orientation, alpha, odd modes, bombs and garbage."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from app.engines.decoding import CorruptImage, ImageTooLarge, NotAnImage, decode_upload


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 12, height: int = 8) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :, None].repeat(height, 0)
    return Image.fromarray(np.concatenate([x, 255 - x, np.full_like(x, 60)], axis=2))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_accepted_format_decodes_to_rgb8(fmt: str) -> None:
    pixels = decode_upload(encoded(gradient(), fmt), 10**6)
    assert pixels.shape == (8, 12, 3) and str(pixels.dtype) == "torch.uint8"
    assert pixels[:, -1, 0].float().mean() > 150  # the red ramp survived (lossy formats too)


def test_gif_takes_the_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert decode_upload(data, 10**6)[0, 0].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encoded(gradient(12, 8), "JPEG", exif=exif.tobytes())
    assert decode_upload(data, 10**6).shape == (12, 8, 3)


def test_alpha_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 0, 255))
    pixels = decode_upload(encoded(image, "PNG"), 10**6)
    assert pixels[1, 1].tolist() == [255, 255, 255] and pixels[0, 0].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("L", (4, 4), 200), "PNG", [200, 200, 200]),
        (Image.new("P", (4, 4), 0), "PNG", [0, 0, 0]),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "TIFF", [255, 255, 255]),
        (Image.new("I;16", (4, 4), 65535), "PNG", [255, 255, 255]),
        (Image.new("I;16", (4, 4), 32896), "TIFF", [128, 128, 128]),
        (Image.new("1", (4, 4), 1), "BMP", [255, 255, 255]),
    ],
    ids=["grey", "palette", "cmyk", "png16", "tiff16", "bilevel"],
)
def test_odd_modes_become_8bit_rgb(image: Image.Image, fmt: str, expected: list[int]) -> None:
    pixels = decode_upload(encoded(image, fmt), 10**6)
    assert pixels.shape == (4, 4, 3) and pixels[2, 2].tolist() == expected


def test_too_many_pixels_is_refused_before_decoding() -> None:
    # 4000x4000 of one colour compresses to a few KB: a miniature decompression bomb
    data = encoded(Image.new("L", (4000, 4000)), "PNG")
    assert len(data) < 100_000
    with pytest.raises(ImageTooLarge, match="16000000 pixels"):
        decode_upload(data, 1_000_000)


def test_garbage_and_truncated_files_are_refused() -> None:
    with pytest.raises(NotAnImage):
        decode_upload(b"%PDF-1.7 not an image", 10**6)
    with pytest.raises(NotAnImage):
        decode_upload(encoded(gradient(), "ICO"), 10**6)  # an image, not an accepted one
    jpeg = encoded(gradient(64, 64), "JPEG")
    with pytest.raises(CorruptImage):
        decode_upload(jpeg[: len(jpeg) // 2], 10**6)
