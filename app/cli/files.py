"""The files a command reads and writes: inputs checked before any work, the output's format
from its suffix, and a write that fails with a message rather than a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from app.cli.errors import USAGE, CliError
from app.engines.imaging import ImageFormat

SUFFIXES = {".png": ImageFormat.PNG, ".jpg": ImageFormat.JPEG, ".jpeg": ImageFormat.JPEG,
            ".webp": ImageFormat.WEBP, "": ImageFormat.PNG}


def _reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else type(exc).__name__


def read_input(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {_reason(exc)}", USAGE) from None


def output_format(path: Path) -> ImageFormat:
    """The format the output's suffix asks for; checked (with the folder) before any work."""
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise CliError(f"cannot write {path.suffix} files ({path}); use .png, .jpg or .webp",
                       USAGE)
    if path.is_dir():
        raise CliError(f"cannot write {path}: it is a directory", USAGE)
    folder = path.parent
    if not folder.is_dir():
        raise CliError(f"cannot write {path}: no directory {folder}", USAGE)
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"cannot write {path}: permission denied", USAGE)
    return fmt


def write_output(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {_reason(exc)}", USAGE) from None
