"""The training set: every image under a folder, decoded as uploads are, squared and resized.

The whole set is decoded once, up front, into one uint8 tensor [N, 3, S, S] (64 px: 12 KB an
image, 1.2 GB for 100,000), which then lives on the training device: a batch is an index
gather and a flip there, so no data loader can starve the GPU and the order of a batch
depends only on the run's seed and the step (exact resume).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from app.engines.decoding import ImageInputError, decode_upload
from app.training.errors import DatasetError

# What the upload decoder reads (PNG, JPEG/MPO, WebP, BMP, TIFF, GIF: first frame), by name.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".mpo", ".webp", ".bmp",
                            ".dib", ".tif", ".tiff", ".gif"})
# Fewer images than this is not a data set a GAN can learn a distribution from.
MIN_IMAGES = 32

Crop = Literal["center", "resize"]


@dataclass(frozen=True)
class ImageFolder:
    """The decoded training set and what it was made from."""

    root: Path
    images: torch.Tensor  # uint8 [N, 3, size, size], RGB
    files: list[str]  # relative to root, in the tensor's order
    size: int
    crop: Crop
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), unreadable
    ignored: int = 0  # files whose names are not images'
    upscaled: int = 0  # images smaller than `size` (after the crop), enlarged

    def __len__(self) -> int:
        return len(self.files)

    @property
    def fingerprint(self) -> str:
        """sha256 of the decoded pixels: the same data, whatever the files are called."""
        digest = hashlib.sha256(f"{self.size}:{self.crop}:".encode())
        digest.update(self.images.contiguous().numpy().data)
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """What a manifest and a checkpoint record about the data."""
        return {"folder": str(self.root), "images": len(self), "size": self.size,
                "crop": self.crop, "skipped_unreadable": len(self.skipped),
                "ignored_not_images": self.ignored, "upscaled": self.upscaled,
                "sha256": self.fingerprint}


def find_images(root: Path) -> tuple[list[Path], int]:
    """Image files under `root` (recursively, sorted, hidden files and folders left out) and
    how many other files there were."""
    found: list[Path] = []
    ignored = 0
    for folder, dirs, names in os.walk(root):  # linked folders are not followed: no cycles
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(folder) / name
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            else:
                ignored += 1
    return found, ignored


def square(pixels: torch.Tensor, size: int, crop: Crop) -> tuple[torch.Tensor, bool]:
    """uint8 [H, W, 3] to uint8 [3, size, size]: the centred square (`center`) or the whole
    image squashed (`resize`), resized with an antialiased bicubic filter. Also whether the
    image had to be enlarged."""
    h, w = pixels.shape[:2]
    x = pixels.permute(2, 0, 1).unsqueeze(0).float()
    if crop == "center":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[:, :, top:top + side, left:left + side]
    upscaled = min(x.shape[-2:]) < size
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                          align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)[0], upscaled


def _prepare(path: Path, size: int, crop: Crop, max_pixels: int) -> tuple[torch.Tensor, bool]:
    data = path.read_bytes()
    # Decoded straight to about 4x the training size (long side) when larger: a 24 MP photo
    # never exists at full size in memory.
    return square(decode_upload(data, max_pixels, long_side=2 * size), size, crop)


def load_image_folder(
    root: Path, size: int, *, crop: Crop = "center", max_pixels: int = 40_000_000,
    workers: int = 4, skip_unreadable: bool = False, min_images: int = MIN_IMAGES,
    progress: Callable[[int, int], None] | None = None,
) -> ImageFolder:
    """Decode every image under `root`. Refuses (DatasetError, naming the files) a missing
    or empty folder, unreadable images (unless `skip_unreadable`) and too few images."""
    if not root.exists():
        raise DatasetError(f"--data: {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"--data: {root} is not a folder")
    paths, ignored = find_images(root)
    if not paths:
        others = f" ({ignored} other files)" if ignored else ""
        raise DatasetError(
            f"--data: no images in {root}{others}; looked for "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} in it and its subfolders")
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    ok = [False] * len(paths)
    failures: list[tuple[str, str]] = []
    upscaled = 0

    def one(index: int) -> tuple[int, str | None, bool]:
        try:
            images[index], enlarged = _prepare(paths[index], size, crop, max_pixels)
        except ImageInputError as exc:
            return index, str(exc), False
        except OSError as exc:
            return index, exc.strerror or str(exc), False
        return index, None, enlarged

    pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="decode")
    try:
        for done, (index, error, enlarged) in enumerate(pool.map(one, range(len(paths))), 1):
            if error is None:
                ok[index] = True
                upscaled += enlarged
            else:
                failures.append((str(paths[index].relative_to(root)), error))
            if progress is not None:
                progress(done, len(paths))
    except BaseException:  # Ctrl-C: do not wait for the rest of a large folder
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    if failures and not skip_unreadable:
        listed = "; ".join(f"{name}: {why}" for name, why in failures[:5])
        more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
        raise DatasetError(
            f"--data: {len(failures)} of {len(paths)} images in {root} could not be read: "
            f"{listed}{more}. Fix or remove them, or pass --skip-unreadable to train without"
            " them")
    keep = [i for i, good in enumerate(ok) if good]
    if len(keep) < min_images:
        why = f" ({len(failures)} unreadable)" if failures else ""
        raise DatasetError(
            f"--data: {root} has {len(keep)} usable images{why}; training needs at least"
            f" {min_images}")
    if len(keep) < len(paths):
        images = images[keep].clone()
    return ImageFolder(root=root, images=images,
                       files=[str(paths[i].relative_to(root)) for i in keep], size=size,
                       crop=crop, skipped=failures, ignored=ignored, upscaled=upscaled)
