"""Decoding uploaded images to uint8 RGB tensors, refusing what cannot or must not be decoded.

Memory is the point of most of this module. An upload is small but its pixels need not be:
an 85 KB PNG can declare 6000x6000 16-bit pixels. So:

- the pixel count is read from the header and checked before Pillow decodes anything (and
  before `Image.open` itself, which for WebP already allocates the canvas);
- with `long_side`, an image is decoded straight to about twice the size the style engine
  will use (JPEG: DCT scaling while decoding; other formats: a box `reduce` applied strip by
  strip), so no full-resolution RGB copy of a large upload exists and none is kept in the
  queue;
- every mode conversion (16-bit, palette, alpha, CMYK) works on strips of rows, so its
  temporaries stay small whatever the image size; 16-bit samples go to 8 bits with integer
  arithmetic.

For PNG, TIFF, WebP, BMP and GIF Pillow can only decode whole images: the decoded buffer in
the file's own mode is unavoidable, everything after it is small.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import (
    BmpImagePlugin,
    ExifTags,
    Image,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    UnidentifiedImageError,
)

from app.engines.style.shapes import fits, output_shape
from app.errors import AtelierError


class ImageInputError(AtelierError, ValueError):
    """An uploaded file that cannot be used as an image; `field` names the upload."""

    status = 422
    slug = "corrupt-image"
    title = "Corrupt image"
    field = "image"

    @property
    def detail(self) -> str:
        return f"{self.field}: {self}"

    def extensions(self) -> dict[str, Any]:
        return {"field": self.field,
                "errors": [{"field": self.field, "message": str(self), "type": "image"}]}


class NotAnImage(ImageInputError):
    status = 415
    slug = "unsupported-image"
    title = "Unsupported image"


class CorruptImage(ImageInputError):
    pass


class ImageTooLarge(ImageInputError):
    status = 413
    slug = "too-many-pixels"
    title = "Image too large"

    def __init__(self, size: tuple[int, int] | None, max_pixels: int) -> None:
        """`size`: (width, height) as the file declares it; None when it could not be read
        (only for files Pillow itself refuses as decompression bombs)."""
        if size is None:
            limit = Image.MAX_IMAGE_PIXELS or 0
            what = f"the image declares more than {2 * limit} pixels"
        else:
            what = f"the image is {size[0]}x{size[1]}, {size[0] * size[1]} pixels"
        super().__init__(f"{what}; at most {max_pixels} are accepted")
        self.size = size
        self.max_pixels = max_pixels


ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
# The plugins Image.open may try. MPO is not one: the JPEG plugin returns MPO files itself.
_OPEN_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*")
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Rows are converted in strips of about this many pixels: the temporaries of a mode
# conversion are a few times this, however large the image.
_STRIP_PIXELS = 1 << 20

# What Pillow raises, from its Python plugins and its C decoders, on a malformed file. Its
# warnings ("Corrupt EXIF data", ...) too, where the process's filters make them errors.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError,
    TypeError, ZeroDivisionError, OverflowError, Image.DecompressionBombError, Warning)

_ORIENTATION = ExifTags.Base.Orientation

# Cheap integer scaling (JPEG DCT scaling, box `reduce`) stops at this many times the size to
# decode to; a bicubic resize does the rest. 2 is Pillow's default for thumbnails; with 1
# (DCT scaling straight to the size) Starry Night reached 2.5 levels of mean difference
# from a full-size decode after the engine's resize, with 2 it stays under 1.1.
_REDUCING_GAP = 2.0


def _looks_like_an_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


# ---- the header, before any decoding -----------------------------------------------------


def _gif_size(data: bytes) -> tuple[int, int]:
    """The logical screen, grown to the first frame when that frame lies outside it (as
    Pillow does)."""
    width, height = struct.unpack_from("<HH", data, 6)
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    while pos < len(data):
        if data[pos] == 0x21:  # extension: a label, then sub-blocks up to an empty one
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
            pos += 1
        elif data[pos] == 0x2C:  # the first image descriptor
            x0, y0, w, h = struct.unpack_from("<4H", data, pos + 1)
            return max(width, x0 + w), max(height, y0 + h)
        else:
            break
    return width, height


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF)
    return None


def _declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header declares them, for the accepted formats; None
    when the header cannot be read (Image.open then says why).

    The plugin classes are used directly: unlike Image.open they do not apply Pillow's
    decompression-bomb check, which raises before the size can be read (and warns through
    the process-wide warnings filters).
    """
    plugins: tuple[tuple[tuple[bytes, ...], Callable[[io.BytesIO], Image.Image]], ...] = (
        ((b"\x89PNG\r\n\x1a\n",), PngImagePlugin.PngImageFile),
        ((b"\xff\xd8\xff",), JpegImagePlugin.JpegImageFile),
        ((b"BM",), BmpImagePlugin.BmpImageFile),
        (_TIFF_SIGNATURES, TiffImagePlugin.TiffImageFile),
    )
    try:
        if data.startswith((b"GIF87a", b"GIF89a")):
            return _gif_size(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        for signatures, plugin in plugins:
            if data.startswith(signatures):
                with plugin(io.BytesIO(data)) as image:
                    return image.size
    except Exception:  # a best-effort read: the real open below reports what is wrong
        return None
    return None


def _other_format(data: bytes) -> str | None:
    """The format, not an accepted one, that Pillow would read this file as, judged by its
    signature only: such files are refused without being parsed."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        if fmt in ACCEPTED_FORMATS or accept is None:
            continue
        try:
            if accept(prefix) is True:
                return fmt
        except Exception:  # a signature check that cannot read a short prefix
            continue
    return None


def _pixel_limit(max_pixels: int) -> int:
    """`max_pixels`, capped at Pillow's own bomb threshold, so that Pillow never warns
    (warnings filters are process-wide: no thread may change them) nor raises."""
    pillow = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow is None else min(max_pixels, pillow)


def _check_pixels(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageTooLarge(size, limit)
    if width < 1 or height < 1:
        raise CorruptImage(f"the image is {width}x{height}: it has no pixels")


def _open(data: bytes, limit: int) -> Image.Image:
    declared = _declared_size(data)
    if declared is not None:
        _check_pixels(declared, limit)
    try:
        image = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError as exc:
        if _looks_like_an_image(data):
            raise CorruptImage("the file starts like an image but cannot be read") from exc
        other = _other_format(data)
        if other is not None:
            raise NotAnImage(f"{other} images are not accepted; send PNG, JPEG, WebP, "
                             "BMP, TIFF or GIF") from exc
        raise NotAnImage("the file is not an image in a supported format") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(declared, limit) from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"the image header could not be read: {exc}") from exc
    if image.format not in ACCEPTED_FORMATS:  # pragma: no cover - Image.open is restricted
        image.close()
        raise NotAnImage(f"{image.format} images are not accepted")
    return image


# ---- pixels ------------------------------------------------------------------------------


def _is_grey(mode: str) -> bool:
    return mode in ("1", "L", "LA", "F", "I") or mode.startswith("I;16")


def _eight_bit(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """A function taking strips of `image` to 8 bits: "L" for grey modes, else "RGB", with
    alpha composited on white. Per-pixel only, so strips convert exactly as the whole."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16/32-bit greyscale: scale to 8 bits rather than clip. 65535 = 255 * 257, so the
        # scaling is a division by 257, rounded (no value is halfway between two).
        extrema = image.getextrema()  # (low, high) for a single-band image
        high = extrema[1] if isinstance(extrema[1], (int, float)) else 0
        peak = 65535 if mode.startswith("I;16") or float(high) > 255 else 255

        def from_wide(strip: Image.Image) -> Image.Image:
            values = np.asarray(strip)
            if peak == 255:
                eight = np.clip(values, 0, 255).astype(np.uint8)
            else:
                wide = np.clip(values, 0, 65535).astype(np.uint32)
                eight = ((wide * 2 + 257) // 514).astype(np.uint8)
            return Image.fromarray(eight, "L")

        return from_wide
    if mode in ("L", "RGB"):
        return lambda strip: strip
    if mode in ("1", "F"):
        return lambda strip: strip.convert("L")
    if mode == "LA":
        def grey_on_white(strip: Image.Image) -> Image.Image:
            background = Image.new("L", strip.size, 255)
            background.paste(strip.getchannel("L"), mask=strip.getchannel("A"))
            return background

        return grey_on_white
    to_rgba = (mode in ("La", "PA", "RGBA", "RGBa")
               or (mode == "P" and "transparency" in image.info))

    def colour(strip: Image.Image) -> Image.Image:
        if not to_rgba:
            return strip.convert("RGB")
        if strip.mode not in ("RGBA", "RGBa"):
            strip = strip.convert("RGBA")
        background = Image.new("RGB", strip.size, (255, 255, 255))
        background.paste(strip, mask=strip.getchannel("A"))
        return background

    return colour


def _strips(image: Image.Image, factor: tuple[int, int]) -> Iterator[tuple[int, Image.Image]]:
    """(row, strip): `image` in 8 bits ("L" or "RGB"), reduced by `factor` (x, y), strip by
    strip; `row` is where the strip goes in the reduced image. Strips are aligned on the
    vertical factor, so the box filter sees exactly the boxes it would see on the whole."""
    width, height = image.size
    convert = _eight_bit(image)
    fy = factor[1]
    rows = max(fy, _STRIP_PIXELS // width // fy * fy)
    for top in range(0, height, rows):
        strip = convert(image.crop((0, top, width, min(height, top + rows))))
        yield top // fy, strip.reduce(factor) if factor != (1, 1) else strip


def _rgb_array(image: Image.Image) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """uint8 [H, W, 3] of an 8-bit "L" or "RGB" image."""
    out = np.empty((image.height, image.width, 3), dtype=np.uint8)
    _put(out, image)
    return out


def _put(out: np.ndarray[Any, np.dtype[np.uint8]], image: Image.Image) -> None:
    """Copy an 8-bit "L" or "RGB" image into `out` ([H, W, 3] of the same H and W)."""
    array = np.asarray(image)
    out[...] = array[..., None] if array.ndim == 2 else array


def _target(size: tuple[int, int], long_side: int | None) -> tuple[int, int] | None:
    """(width, height) to decode to: twice the engine's output shape for `long_side`, or
    None to decode at full size. Twice, so that the engine's own antialiased resize still
    does the last step (2:1), and so that `output_shape` and `fits` say of the decoded shape
    exactly what they say of the file's: both round the short side, and doubling keeps it
    an integer. Images that do not `fit` (too elongated: the engine would stretch their
    short side, and the service refuses them) are decoded at full size, aspect kept."""
    if long_side is None:
        return None
    width, height = size
    if not fits((height, width), long_side):
        return None
    out_h, out_w = output_shape((height, width), long_side)
    if 2 * out_w >= width or 2 * out_h >= height:
        return None
    return 2 * out_w, 2 * out_h


def _pixels(image: Image.Image, long_side: int | None) -> np.ndarray[Any, np.dtype[np.uint8]]:
    image.seek(0)  # animated GIF/WebP, MPO, multi-page TIFF: the first frame
    target = _target(image.size, long_side)
    # The region of the (possibly already scaled) image that is the whole picture: scaling
    # by integer factors rounds sizes up, so it is fractional, and passing it to the final
    # resize keeps the geometry exact.
    box = (0.0, 0.0, float(image.width), float(image.height))
    if target is not None and isinstance(image, JpegImagePlugin.JpegImageFile):
        # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, keeping >= the size asked for
        wanted = (round(target[0] * _REDUCING_GAP), round(target[1] * _REDUCING_GAP))
        drafted = image.draft("RGB", wanted)
        if drafted is not None:
            box = tuple(float(v) for v in drafted[1])  # type: ignore[assignment]
    image.load()
    # TIFF applies its orientation while loading; the others keep it in their EXIF.
    orientation = image.getexif().get(_ORIENTATION, 1)
    width, height = image.size
    if target is None:
        out = np.empty((height, width, 3), dtype=np.uint8)
        for row, strip in _strips(image, (1, 1)):
            _put(out[row:row + strip.height], strip)
        return _orient(out, orientation)
    factor = (max(1, int(width / target[0] / _REDUCING_GAP)),
              max(1, int(height / target[1] / _REDUCING_GAP)))
    if image.mode in ("L", "RGB"):
        reduced = image.reduce(factor) if factor != (1, 1) else image
    else:
        reduced = Image.new("L" if _is_grey(image.mode) else "RGB",
                            (-(-width // factor[0]), -(-height // factor[1])))
        for row, strip in _strips(image, factor):
            reduced.paste(strip, (0, row))
        image.close()  # the full-size buffer is no longer needed
    box = (box[0] / factor[0], box[1] / factor[1], box[2] / factor[0], box[3] / factor[1])
    resized = reduced.resize(target, Image.Resampling.BICUBIC, box=box)
    del reduced
    return _orient(_rgb_array(resized), orientation)


def _orient(
    array: np.ndarray[Any, np.dtype[np.uint8]], orientation: object
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Apply an EXIF orientation (what ImageOps.exif_transpose does) to [H, W, 3]."""
    turned = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }.get(orientation if isinstance(orientation, int) else 1)
    return array if turned is None else np.ascontiguousarray(turned(array))


def decode_upload(data: bytes, max_pixels: int, long_side: int | None = None) -> torch.Tensor:
    """Bytes of an uploaded image to uint8 [H, W, 3] RGB, upright, alpha on white.

    The pixel count is checked from the header, before any pixel is decoded, so a small file
    that would inflate to gigabytes (a decompression bomb) is refused cheaply.

    `long_side`: the long side the image will be resized to (the style engine's `size`, or
    `round(size * style_scale)` for a style image). When the image is more than twice as
    large as that, it is decoded to exactly twice the engine's output shape for it
    (`output_shape(shape, long_side)`, doubled) instead of at full size: the engine's
    resize then gives the same shape and, within about a level, the same pixels, and
    `fits` the same verdict. Never upscaled nor stretched: images that do not `fit` are
    decoded at full size. None decodes at full size.
    """
    if long_side is not None and long_side < 1:
        raise ValueError(f"long_side must be positive, not {long_side}")
    limit = _pixel_limit(max_pixels)
    image = _open(data, limit)
    try:
        _check_pixels(image.size, limit)  # what Image.open found, GIF frames included
        pixels = _pixels(image, long_side)
    except ImageInputError:
        raise
    except _DECODE_ERRORS as exc:
        raise CorruptImage(f"the image could not be decoded: {exc}") from exc
    finally:
        image.close()
    return torch.from_numpy(pixels)
