"""Hostile uploads: each is decoded to uint8 [H, W, 3] or refused with one of the three input
errors (never anything else), within a CPU-time and a memory bound, and a refusal for size
reports the dimensions the file declares."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from app.engines.decoding import ImageInputError, ImageTooLarge, decode_upload
from tests.hostile import ERRORS, MAX_PIXELS, Case, corpus, measure

# Per upload. The largest legitimate case, a 6000x6000 16-bit PNG decoded at full size,
# needs its 72 MB 16-bit buffer and its 108 MB result; nothing may come near 300 MB.
MEMORY_BOUND_MB = 300
# CPU seconds of the decoding thread, so that other processes on the machine do not count.
CPU_BOUND_S = 2.0
# Long sides: at full size (the CLI), and a service job's size.
LONG_SIDES = [None, 512]

CASES = corpus()


@pytest.mark.parametrize("long_side", LONG_SIDES, ids=lambda side: f"long{side}")
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_upload_is_decoded_or_refused(case: Case, long_side: int | None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = measure(lambda: decode_upload(case.data, MAX_PIXELS, long_side))
    result = run.result

    assert isinstance(result, (torch.Tensor, *ERRORS)), (
        f"{case.name}: {type(result).__name__}: {result}")
    if isinstance(result, torch.Tensor):
        assert result.dtype == torch.uint8 and result.ndim == 3 and result.shape[2] == 3
        assert result.shape[0] >= 1 and result.shape[1] >= 1 and result.is_contiguous()
        assert case.expect not in ("error",) and not isinstance(case.expect, type), (
            f"{case.name} decoded to {tuple(result.shape)}, expected {case.expect}")
    else:
        assert case.expect != "ok", f"{case.name}: {type(result).__name__}: {result}"
        if isinstance(case.expect, type):
            assert type(result) is case.expect, f"{case.name}: {result!r}"
        message = str(result)
        assert not re.search(r"(?<![\w.])-1\b", message), message  # no "-1 pixels"
        if case.declared is not None:
            width, height = case.declared
            assert f"{width}x{height}, {width * height} pixels" in message, message
        assert isinstance(result, ImageInputError) and result.status in (413, 415, 422)

    bombs = [w for w in caught if "DecompressionBomb" in type(w.message).__name__]
    assert not bombs, f"{case.name}: Pillow warned {bombs[0].message}"
    assert run.cpu_s < CPU_BOUND_S, f"{case.name}: {run.cpu_s:.2f} s of CPU"
    if run.peak_mb is not None:
        assert run.peak_mb < MEMORY_BOUND_MB, f"{case.name}: +{run.peak_mb:.0f} MB peak"


def test_the_corpus_covers_the_probe() -> None:
    names = {case.name for case in CASES}
    for needed in ("png-bomb", "gif-bomb", "webp-vp8x-bomb", "tiff-bomb", "png16-6000x6000",
                   "png-100000x1", "png-1x100000", "png-4000x8", "truncated", "empty",
                   "pdf", "zip", "svg", "html", "header-then-garbage", "jpeg-cmyk",
                   "png-palette-trns", "gif-1000-frames", "jpeg-exif-rotated",
                   "tiff-300-pages", "ico", "psd", "jpeg-1mb-icc"):
        assert any(needed in name for name in names), needed
    bombs = [case for case in CASES if case.declared is not None]
    assert len(bombs) >= 10 and all(case.expect is ImageTooLarge for case in bombs)
