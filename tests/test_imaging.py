"""The PNG writer (`imaging.png`, behind every PNG the service sends): what a decoder reads
back is exactly the pixels written, for every channel count and shape."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from app.engines import imaging
from app.engines.imaging import ImageFormat

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def decoded(data: bytes) -> tuple[str, np.ndarray]:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image.mode, np.asarray(image)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize(("height", "width"), [(1, 1), (64, 64), (3, 517), (301, 2)])
def test_pixels_read_back_exactly(channels: int, height: int, width: int) -> None:
    rng = np.random.default_rng(height * 1000 + width * 10 + channels)
    noise = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    # Runs and steps too: what the run-length strategy and the Up filter meet in real images.
    flat = np.zeros_like(noise)
    flat[height // 2:, : width // 2] = 255
    for pixels in (noise, flat):
        mode, back = decoded(imaging.png(pixels))
        assert mode == MODES[channels]
        assert np.array_equal(back.reshape(pixels.shape), pixels)


def test_the_strategy_changes_the_bytes_never_the_pixels() -> None:
    pixels = np.random.default_rng(0).integers(0, 8, (48, 40, 3), dtype=np.uint8)
    runs = imaging.png(pixels)
    searched = imaging.png(pixels, strategy=zlib.Z_DEFAULT_STRATEGY)
    assert runs != searched
    assert np.array_equal(decoded(runs)[1], decoded(searched)[1])


def test_encode_writes_tensors_and_pillow_images_through_it() -> None:
    tensor = torch.randint(0, 256, (20, 30, 3), dtype=torch.uint8)
    grey = torch.randint(0, 256, (20, 30), dtype=torch.uint8)
    for image, expected in ((tensor, tensor.numpy()), (grey, grey.numpy()),
                            (Image.fromarray(tensor.numpy()), tensor.numpy())):
        data = imaging.encode(image, ImageFormat.PNG)
        assert data == imaging.png(expected if expected.ndim == 3 else expected[:, :, None])
        assert np.array_equal(decoded(data)[1], expected)
    # A mode the writer does not take (palette) is Pillow's to write, and still a PNG.
    palette = Image.fromarray(tensor.numpy()).convert("P")
    assert np.array_equal(decoded(imaging.encode(palette, ImageFormat.PNG))[1],
                          np.asarray(palette))
