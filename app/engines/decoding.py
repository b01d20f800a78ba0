"""Decoding uploaded images to uint8 RGB tensors, refusing what cannot or must not be decoded."""

from __future__ import annotations

import io
from typing import Any

import torch
from PIL import Image

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

    def __init__(self, pixels: int, max_pixels: int) -> None:
        super().__init__(f"the image has {pixels} pixels; at most {max_pixels} are accepted")


ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "MPO"})
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*")


def _looks_like_an_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Any mode (palette, grey, CMYK, 16-bit, alpha) to 8-bit RGB, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clip
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray((array * (255.0 / peak)).round().clip(0, 255).astype("uint8"))
    if image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "RGBa"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def decode_upload(data: bytes, max_pixels: int) -> torch.Tensor:
    """Bytes of an uploaded image to uint8 [H, W, 3] RGB.

    The pixel count is checked from the header, before any pixel is decoded, so a small file
    that would inflate to gigabytes (a decompression bomb) is refused cheaply.
    """
    import warnings

    from PIL import ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        if isinstance(exc, UnidentifiedImageError):
            if _looks_like_an_image(data):
                raise CorruptImage("the file starts like an image but cannot be read") from exc
            raise NotAnImage("the file is not an image in a supported format") from exc
        raise ImageTooLarge(-1, max_pixels) from exc
    if image.format not in ACCEPTED_FORMATS:
        raise NotAnImage(f"{image.format} images are not accepted; send PNG, JPEG, WebP, "
                         "BMP, TIFF or GIF")
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(width * height, max_pixels)
    try:
        image.seek(0)  # animated GIF/WebP: the first frame
        image.load()
        upright: Image.Image = ImageOps.exif_transpose(image) or image
        rgb = _to_rgb8(upright)
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImage(f"the image could not be decoded: {exc}") from exc
    import numpy as np

    return torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True))
