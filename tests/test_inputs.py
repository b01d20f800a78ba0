"""Decoding uploads: formats, orientation, alpha, odd modes, bombs and garbage."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from app.engines import decoding
from app.engines.decoding import (
    CorruptImage,
    ImageInputError,
    ImageTooLarge,
    NotAnImage,
    decode_upload,
)
from app.engines.style.shapes import MIN_SIDE, fits, output_shape, resize_long_side
from tests import hostile


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


# ---- decoding to the size a job needs (long_side) ----------------------------------------

PHOTOS = Path("/work/shared/images")


def full_then_engine(data: bytes, long_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine's input for `long_side`: from a full-size decode, and from a reduced one."""
    full = resize_long_side(decode_upload(data, 10**8), long_side, MIN_SIDE)
    reduced = resize_long_side(decode_upload(data, 10**8, long_side), long_side, MIN_SIDE)
    return full, reduced


@pytest.mark.parametrize(("width", "height"), [(640, 480), (480, 640), (333, 1000),
                                                (1000, 61), (997, 593), (64, 64)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_long_side_decodes_to_twice_the_output_shape(width: int, height: int, fmt: str) -> None:
    data = encoded(gradient(width, height), fmt)
    full = decode_upload(data, 10**6)
    for long_side in (16, 50, 100, 128, 200, 256, 300, 333, 500, 1000, 2000):
        out_h, out_w = output_shape(full.shape, long_side)
        shape = tuple(decode_upload(data, 10**6, long_side).shape)
        if fits(full.shape, long_side) and 2 * out_h < height and 2 * out_w < width:
            assert shape == (2 * out_h, 2 * out_w, 3), long_side  # reduced, never below 2x
        else:  # never upscaled, never stretched (an elongated image is not reduced)
            assert shape == (height, width, 3), long_side
        # so the job sees the same output shape, and the same elongation verdict
        assert output_shape(shape, long_side) == (out_h, out_w)
        assert fits(shape, long_side) == fits(full.shape, long_side)


def test_long_side_must_be_positive() -> None:
    with pytest.raises(ValueError, match="long_side"):
        decode_upload(encoded(gradient(), "PNG"), 10**6, 0)


@pytest.mark.skipif(not PHOTOS.is_dir(), reason="the shared photographs are not here")
@pytest.mark.parametrize("name", ["starry_night.jpg", "tubingen.jpg", "the_scream.jpg",
                                  "coffee.png"])
def test_long_side_changes_what_the_engine_sees_by_under_a_level(name: str) -> None:
    original = (PHOTOS / name).read_bytes()
    as_png = encoded(Image.open(io.BytesIO(original)).convert("RGB"), "PNG")
    for data in (original, as_png):  # DCT scaling for JPEG, box reduction for PNG
        for long_side in (64, 128, 200):
            full, reduced = full_then_engine(data, long_side)
            assert full.shape == reduced.shape
            difference = (full.int() - reduced.int()).abs().float().mean().item()
            assert difference < 1.5, (name, long_side, difference)  # measured: at most 1.1


def _odd_mode_images() -> list[tuple[str, bytes]]:
    rgb = hostile.photo(300, 200)
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    wide = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgb.size))
    return [
        ("rgba", encoded(rgba, "PNG")),
        ("la", encoded(rgba.convert("LA"), "PNG")),
        ("palette-trns", encoded(palette, "PNG", transparency=3)),
        ("grey16", encoded(Image.fromarray(wide), "PNG")),
        ("cmyk-jpeg", encoded(rgb.convert("CMYK"), "JPEG", quality=95)),
        ("grey-jpeg", encoded(rgb.convert("L"), "JPEG", quality=95)),
        ("gif", encoded(palette, "GIF")),
        ("webp", encoded(rgb, "WEBP", lossless=True)),
        ("tiff-cmyk", encoded(rgb.convert("CMYK"), "TIFF")),
        ("rotated-jpeg", hostile.exif_rotated_jpeg(6)),
    ]


@pytest.mark.parametrize(("mode", "data"), _odd_mode_images(), ids=lambda v: str(v)[:12])
def test_long_side_keeps_every_mode_close_to_full_decoding(
    mode: str, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    for long_side in (16, 40, 70):
        full, reduced = full_then_engine(data, long_side)
        assert full.shape == reduced.shape, mode
        difference = (full.int() - reduced.int()).abs().float().mean().item()
        assert difference < 1.5, (mode, long_side, difference)
    # strips are an implementation detail: one row at a time gives the very same pixels
    whole = decode_upload(data, 10**6, 40)
    monkeypatch.setattr(decoding, "_STRIP_PIXELS", 1)
    assert torch.equal(decode_upload(data, 10**6, 40), whole)
    assert torch.equal(decode_upload(data, 10**6), decode_upload(data, 10**6, 10**4))


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF"])
def test_every_exif_orientation_is_applied_like_pillow(orientation: int, fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(hostile.photo(111, 69), fmt, exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(decode_upload(data, 10**6).numpy(), expected)
    # reduced in the file's orientation, then turned: twice the upright output shape
    reduced = decode_upload(data, 10**6, 30)
    assert reduced.shape[:2] == tuple(2 * side for side in output_shape(expected.shape, 30))
    engine = resize_long_side(reduced, 30, MIN_SIDE).int()
    from_full = resize_long_side(torch.from_numpy(expected.copy()), 30, MIN_SIDE).int()
    assert (engine - from_full).abs().float().mean() < 1.5


def test_32bit_grey_scales_only_beyond_8_bits() -> None:
    small = Image.fromarray(np.array([[0, 100, 255, -5]], dtype=np.int32))
    assert decode_upload(encoded(small, "TIFF"), 10**6)[0, :, 0].tolist() == [0, 100, 255, 0]
    wide = Image.fromarray(np.array([[0, 257 * 100, 65535, 70000]], dtype=np.int32))
    assert decode_upload(encoded(wide, "TIFF"), 10**6)[0, :, 0].tolist() == [0, 100, 255, 255]


def test_sixteen_bit_rounds_like_the_float_formula() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    got = decode_upload(encoded(Image.fromarray(values), "PNG"), 10**6)[..., 0].numpy()
    expected = np.round(values.astype(np.float64) * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(got, expected)


# ---- memory --------------------------------------------------------------------------------

needs_peaks = pytest.mark.skipif(not hostile.precise_peaks(),
                                 reason="peak memory is measured on Linux with glibc only")


@needs_peaks
def test_sixteen_bit_png_peak_memory_stays_near_its_16_bit_buffer() -> None:
    gradient16 = np.linspace(0, 65535, 6000).astype(">u2").tobytes()
    data = hostile.png(6000, 6000, depth=16, row=gradient16)  # ~0.5 MB
    buffer_mb = 6000 * 6000 * 2 / 2**20  # 69 MiB: Pillow cannot decode a PNG partially
    run = hostile.measure(lambda: decode_upload(data, 40_000_000, 1024))
    assert run.result.shape == (2048, 2048, 3)
    assert run.peak_mb is not None and run.peak_mb < 2 * buffer_mb, run.peak_mb  # was ~960
    full = hostile.measure(lambda: decode_upload(data, 40_000_000))
    result_mb = 6000 * 6000 * 3 / 2**20
    assert full.peak_mb is not None and full.peak_mb < 1.2 * (buffer_mb + result_mb)


@needs_peaks
def test_large_jpeg_for_a_small_size_is_decoded_small() -> None:
    data = encoded(hostile.photo(600, 400).resize((6000, 4000)), "JPEG")
    run = hostile.measure(lambda: decode_upload(data, 40_000_000, 512))
    assert run.result.shape == (682, 1024, 3)
    # DCT scaling by 1/2: the 96 MB full-size RGB buffer never exists (was ~410 MB peak)
    assert run.peak_mb is not None and run.peak_mb < 40, run.peak_mb


# ---- limits and errors ---------------------------------------------------------------------


def test_bombs_report_the_dimensions_they_declare() -> None:
    with pytest.raises(ImageTooLarge, match=r"100000x100000, 10000000000 pixels"):
        decode_upload(hostile.png(100_000, 100_000, rows=1), 40_000_000)
    with pytest.raises(ImageTooLarge, match=r"16384x16384"):
        decode_upload(hostile.webp_vp8l(16384, 16384), 40_000_000)


def test_the_limit_never_exceeds_pillows_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encoded(gradient(40, 40), "PNG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and Pillow never gets to warn
        with pytest.raises(ImageTooLarge, match="40x40, 1600 pixels; at most 1000"):
            decode_upload(data, 10**6)
        assert decode_upload(encoded(gradient(30, 30), "PNG"), 10**6).shape == (30, 30, 3)


def test_errors_keep_their_problem_types_and_field() -> None:
    kinds: list[tuple[type[ImageInputError], int, str]] = [
        (NotAnImage, 415, "unsupported-image"), (CorruptImage, 422, "corrupt-image"),
        (ImageTooLarge, 413, "too-many-pixels")]
    for error, status, slug in kinds:
        assert (error.status, error.slug) == (status, slug)
    with pytest.raises(ImageTooLarge) as caught:
        decode_upload(hostile.png(9000, 9000, rows=1), 40_000_000)
    caught.value.field = "style[1]"
    assert caught.value.detail.startswith("style[1]: the image is 9000x9000")
    assert caught.value.extensions()["field"] == "style[1]"
