"""A corpus of hostile uploads, built in memory: what a probe threw at `decode_upload`, and more.

Each `Case` says what a correct decoder does with it: decode it ("ok"), refuse it with one
particular error, or either (`expect=None`: some files are broken in ways a decoder may
legitimately tolerate). Bombs carry the dimensions they declare, which the refusal must
report. Nothing here needs a file on disk; `corpus()` takes well under a second.
"""

from __future__ import annotations

import ctypes
import io
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.engines.decoding import CorruptImage, ImageInputError, ImageTooLarge, NotAnImage

MAX_PIXELS = 40_000_000  # the service's default


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    # "ok"; an error class; "error": any of the three; None: either decoded or refused
    expect: type[ImageInputError] | str | None
    declared: tuple[int, int] | None = None  # (width, height) a bomb declares

    def __repr__(self) -> str:  # keep pytest ids and failure messages short
        return f"Case({self.name}, {len(self.data)} bytes)"


# ---- building blocks ---------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: compresses like a photograph, not like a flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1),
                     (x + y) / max(width + height - 2, 1)], axis=-1) * 200
    noise = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(base + noise + 20, 0, 255).astype(np.uint8))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, *, depth: int = 8, colour: int = 0, rows: int | None = None,
        row: bytes | None = None, extra: Iterable[bytes] = ()) -> bytes:
    """A PNG whose IDAT holds `rows` copies of `row` (default: all of them, zeros): with
    fewer rows than `height` it is a header that promises more than the file holds."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row_bytes = (width * channels * depth + 7) // 8
    row = row if row is not None else bytes(row_bytes)
    compressor = zlib.compressobj(6)
    line = b"\0" + row
    body = b"".join(compressor.compress(line) for _ in range(height if rows is None else rows))
    body += compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + b"".join(extra)
            + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


def tiff(pages: list[tuple[int, int, bytes]], *, extra: Iterable[tuple[int, int, int]] = ()
         ) -> bytes:
    """Little-endian, uncompressed 8-bit grey TIFF; one (width, height, strip) per page.
    `extra`: more (tag, type, value) entries for every page (type 3 SHORT or 4 LONG)."""
    out = bytearray(b"II*\x00\0\0\0\0")
    previous_link = 4  # where the offset of the next IFD goes
    for width, height, strip in pages:
        strip_at = len(out)
        out += strip + b"\0" * (len(strip) % 2)
        entries = sorted([(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1),
                          (262, 3, 1), (273, 4, strip_at), (277, 3, 1), (278, 4, height),
                          (279, 4, len(strip)), *extra])
        ifd_at = len(out)
        struct.pack_into("<I", out, previous_link, ifd_at)
        out += struct.pack("<H", len(entries))
        for tag, kind, value in entries:
            out += struct.pack("<HHI", tag, kind, 1)
            out += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        previous_link = len(out)
        out += b"\0\0\0\0"
    return bytes(out)


def gif_bomb(screen: tuple[int, int], frame: tuple[int, int, int, int]) -> bytes:
    """A GIF with this logical screen and one 1x1-pixel-data frame at (x, y, w, h)."""
    x, y, w, h = frame
    return (b"GIF89a" + struct.pack("<HH", *screen) + b"\x80\x00\x00"
            + b"\xff\xff\xff\x00\x00\x00"
            + b"," + struct.pack("<4H", x, y, w, h) + b"\x00"
            + b"\x02\x02\x44\x01\x00;")


def webp_vp8x(width: int, height: int) -> bytes:
    body = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(body)) + body
    inner = b"WEBP" + chunk + b"VP8L" + struct.pack("<I", 8) + b"\x2f" + bytes(7)
    return b"RIFF" + struct.pack("<I", len(inner)) + inner


def webp_vp8l(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + struct.pack("<I", bits) + bytes(16)
    inner = b"WEBP" + b"VP8L" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", len(inner)) + inner


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 is patched to declare width x height."""
    data = bytearray(encoded(photo(32, 32), "JPEG"))
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def bmp_with_size(width: int, height: int) -> bytes:
    data = bytearray(encoded(photo(8, 8), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)
    return bytes(data)


def psd(width: int, height: int) -> bytes:
    return (b"8BPS" + struct.pack(">H", 1) + bytes(6)
            + struct.pack(">HIIHH", 3, height, width, 8, 3) + bytes(64))


def animated_gif(frames: int) -> bytes:
    images = []
    for i in range(frames):
        frame = Image.new("P", (16, 16), i % 2)
        frame.putpalette([255, 0, 0, 0, 0, 255])
        images.append(frame)
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=10)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(photo(96, 64), "JPEG", exif=exif.tobytes())


# ---- the corpus --------------------------------------------------------------------------


def _bombs() -> list[Case]:
    huge = (100_000, 100_000)
    cases = [
        Case("png-bomb-100000x100000", png(*huge, rows=4), ImageTooLarge, huge),
        Case("png-bomb-rgba16-65535x65535", png(65535, 65535, depth=16, colour=6, rows=1),
             ImageTooLarge, (65535, 65535)),
        # over the limit but under Pillow's own bomb threshold: a real, tiny, valid file
        Case("png-8000x8000-zeros", png(8000, 8000), ImageTooLarge, (8000, 8000)),
        # in Pillow's warning range (89M-179M pixels): must not warn, nor report -1
        Case("png-10000x10000-warning-range", png(10_000, 10_000, rows=2), ImageTooLarge,
             (10_000, 10_000)),
        Case("gif-bomb-screen-65535x65535", gif_bomb((65535, 65535), (0, 0, 1, 1)),
             ImageTooLarge, (65535, 65535)),
        Case("gif-bomb-frame-outside-screen", gif_bomb((16, 16), (60000, 60000, 5000, 5000)),
             ImageTooLarge, (65000, 65000)),
        Case("webp-vp8x-bomb-16777216x16777216", webp_vp8x(1 << 24, 1 << 24), ImageTooLarge,
             (1 << 24, 1 << 24)),
        Case("webp-vp8x-10000x10000", webp_vp8x(10_000, 10_000), ImageTooLarge,
             (10_000, 10_000)),
        Case("webp-vp8l-bomb-16384x16384", webp_vp8l(16384, 16384), ImageTooLarge,
             (16384, 16384)),
        Case("tiff-bomb-100000x100000", tiff([(100_000, 100_000, bytes(64))]), ImageTooLarge,
             huge),
        Case("tiff-bomb-rotated", tiff([(200_000, 300, bytes(64))], extra=[(274, 3, 6)]),
             ImageTooLarge, (300, 200_000)),
        Case("jpeg-bomb-65500x65500", jpeg_with_size(65500, 65500), ImageTooLarge,
             (65500, 65500)),
        Case("bmp-bomb-100000x100000", bmp_with_size(*huge), ImageTooLarge, huge),
        # not an accepted format: refused as such, never decoded
        Case("psd-bomb", psd(300_000, 300_000), NotAnImage),
    ]
    return cases


def _sizes() -> list[Case]:
    gradient16 = np.linspace(0, 65535, 6000).astype(">u2").tobytes()
    return [
        Case("png16-6000x6000", png(6000, 6000, depth=16, row=gradient16), "ok"),
        Case("png-100000x1", png(100_000, 1, colour=2), "ok"),
        Case("png-1x100000", png(1, 100_000, colour=2), "ok"),
        Case("png-4000x8", encoded(photo(4000, 8), "PNG"), "ok"),
        Case("png-0x10", png(0, 10, rows=0), None),
        Case("jpeg-6000x4000", encoded(photo(600, 400).resize((6000, 4000)), "JPEG"), "ok"),
    ]


def _truncated() -> list[Case]:
    cases = []
    image = photo(64, 48)
    variants: list[tuple[str, str, dict[str, object]]] = [
        ("png", "PNG", {}), ("jpeg", "JPEG", {}),
        ("jpeg-progressive", "JPEG", {"progressive": True}), ("webp", "WEBP", {}),
        ("webp-lossless", "WEBP", {"lossless": True}), ("bmp", "BMP", {}), ("tiff", "TIFF", {}),
        ("tiff-deflate", "TIFF", {"compression": "tiff_deflate"}), ("gif", "GIF", {})]
    for tag, fmt, options in variants:
        data = encoded(image, fmt, **options)
        for label, cut in [("half", len(data) // 2), ("header", 40), ("8-bytes", 8),
                           ("all-but-1", len(data) - 1)]:
            # refused, except where the lost bytes carried no pixels; 8 bytes may not even
            # say which format it was
            expect = {"all-but-1": None, "8-bytes": "error"}.get(label, CorruptImage)
            cases.append(Case(f"{tag}-truncated-{label}", data[:cut], expect))
    return cases


def _not_images() -> list[Case]:
    good_png = encoded(photo(), "PNG")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("image.png", good_png)
    rng = np.random.default_rng(1)
    garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    return [
        Case("empty", b"", NotAnImage),
        Case("one-byte", b"\x89", NotAnImage),
        Case("pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", NotAnImage),
        Case("zip-of-a-png", zipped.getvalue(), NotAnImage),
        Case("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999">'
             b'<rect width="100%" height="100%"/></svg>', NotAnImage),
        Case("html", b"<!doctype html><html><body><img src=x></body></html>", NotAnImage),
        Case("random-bytes", garbage, NotAnImage),
        # a PNG sent under another name decodes: the name means nothing
        Case("png-renamed", good_png, "ok"),
        Case("png-magic-broken", b"\x89PNX" + good_png[4:], NotAnImage),
        Case("jpeg-with-png-magic", b"\x89PNG\r\n\x1a\n" + encoded(photo(), "JPEG"),
             CorruptImage),
        Case("png-header-then-garbage", good_png[:33] + garbage, CorruptImage),
        Case("jpeg-soi-then-garbage", b"\xff\xd8\xff\xe0" + garbage, CorruptImage),
        Case("gif-header-then-garbage", b"GIF89a" + garbage, None),
        Case("tiff-header-then-garbage", b"II*\x00" + garbage, CorruptImage),
        Case("webp-header-then-garbage", b"RIFF\x00\x10\x00\x00WEBPVP8 " + garbage,
             CorruptImage),
        Case("bmp-header-then-garbage", b"BM" + garbage, CorruptImage),
        Case("ico", encoded(photo(32, 32), "ICO"), NotAnImage),
        Case("psd", psd(32, 32), NotAnImage),
    ]


def _odd_but_valid() -> list[Case]:
    cmyk = photo().convert("CMYK")
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.paste(1, (8, 8, 24, 24))
    icc = bytes(range(256)) * 4096  # 1 MB: Pillow splits it into 16 APP2 segments
    exif = Image.Exif()
    exif[0x010E] = "x" * 60_000  # ImageDescription: one APP1 segment filled to the brim
    many_pages = tiff([(8, 8, bytes(range(64)))] * 300)
    text_bomb = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(bytes(50_000_000), 9))
    icc_bomb = png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(bytes(50_000_000), 9))
    grey16 = np.arange(64 * 48, dtype=np.int32).reshape(48, 64) * 1000 - 500_000
    return [
        Case("jpeg-cmyk", encoded(cmyk, "JPEG"), "ok"),
        Case("tiff-cmyk", encoded(cmyk, "TIFF"), "ok"),
        Case("png-palette-trns", encoded(palette, "PNG", transparency=0), "ok"),
        Case("gif-palette-transparency", encoded(palette, "GIF", transparency=0), "ok"),
        Case("gif-1000-frames", animated_gif(1000), "ok"),
        Case("webp-animated", encoded(photo(), "WEBP", save_all=True,
                                      append_images=[photo(seed=2)], duration=10), "ok"),
        Case("jpeg-exif-rotated", exif_rotated_jpeg(6), "ok"),
        Case("jpeg-exif-orientation-99", exif_rotated_jpeg(99), "ok"),
        Case("tiff-300-pages", many_pages, "ok"),
        Case("jpeg-1mb-icc", encoded(photo(), "JPEG", icc_profile=icc), "ok"),
        Case("jpeg-60kb-exif", encoded(photo(), "JPEG", exif=exif.tobytes()), "ok"),
        Case("png-ztxt-bomb", png(64, 64, extra=[text_bomb]), None),
        Case("png-iccp-bomb", png(64, 64, extra=[icc_bomb]), None),
        Case("png-la", encoded(photo().convert("LA"), "PNG"), "ok"),
        Case("png-rgba", encoded(photo().convert("RGBA"), "PNG"), "ok"),
        Case("bmp-1bit", encoded(photo().convert("1"), "BMP"), "ok"),
        Case("tiff-int32-negative", encoded(Image.fromarray(grey16), "TIFF"), "ok"),
        Case("tiff-float", encoded(Image.fromarray(grey16.astype(np.float32) / 1e4), "TIFF"),
             "ok"),
        Case("tiff-rotated", tiff([(32, 16, bytes(range(256)) * 2)], extra=[(274, 3, 6)]),
             "ok"),
        Case("jpeg-progressive", encoded(photo(640, 480), "JPEG", progressive=True), "ok"),
        Case("mpo", encoded(photo(), "MPO", save_all=True, append_images=[photo(seed=3)]),
             "ok"),
    ]


@cache
def corpus() -> tuple[Case, ...]:
    return tuple(_bombs() + _sizes() + _truncated() + _not_images() + _odd_but_valid())


ERRORS = (NotAnImage, CorruptImage, ImageTooLarge)


# ---- measuring one call ------------------------------------------------------------------


@cache
def precise_peaks() -> bool:
    """Whether `measure` can give the peak memory of one call: Linux, whose peak RSS
    (VmHWM) can be reset through /proc/self/clear_refs, and glibc, told here to give every
    buffer of 128 KB or more back to the system when it is freed (by default it may keep
    freed buffers up to 32 MB for reuse, and a call reusing them would look free).

    This changes the allocator for the rest of the process; it only makes large buffers
    cost an mmap each. Called by the tests that measure, not at import.
    """
    if not Path("/proc/self/clear_refs").exists():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, 128 * 1024))
    except (OSError, AttributeError):
        return False


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


@dataclass
class Measured:
    result: Any  # what the call returned, or the exception it raised
    peak_mb: float | None  # peak RSS growth during the call; None where it cannot be told
    cpu_s: float  # CPU time of this thread: what the call costs, whatever else runs
    wall_s: float


def measure(call: Callable[[], Any]) -> Measured:
    """Run `call` once, catching any exception, and measure it."""
    precise = precise_peaks()
    if precise:
        before = _status_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    cpu, wall = time.thread_time(), time.perf_counter()
    result: Any
    try:
        result = call()
    except Exception as exc:
        result = exc
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    peak = _status_mb("VmHWM") - before if precise else None
    return Measured(result, peak, cpu, wall)

if __name__ == "__main__":  # a quick look: python -m tests.hostile
    from app.engines.decoding import decode_upload

    for case in corpus():
        try:
            shape: object = tuple(decode_upload(case.data, MAX_PIXELS, 512).shape)
        except ERRORS as exc:
            shape = f"{type(exc).__name__}: {exc}"
        print(f"{case.name:40s} {len(case.data):>9d}  {shape}")
