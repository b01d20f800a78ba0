"""A trained generator becomes a catalog model: safetensors in the model dir, a manifest in
`<model_dir>/trained/`. The weights go first (renamed into place), the manifest last, so a
catalog that sees the manifest always finds the weights it pins."""

from __future__ import annotations

import copy
import datetime
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from app.catalog.manifest import Manifest
from app.catalog.pull import sha256_of, weights_path
from app.catalog.registry import trained_dir
from app.nets.loading import load_gan
from app.training.errors import TrainingError
from app.training.nets import architecture
from app.training.trainer import Trainer


@dataclass(frozen=True)
class Exported:
    manifest: Manifest
    weights: Path
    manifest_path: Path


def _clean(value: Any) -> Any:
    """TOML has no null: drop None members, recursively."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value if v is not None]
    return value


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)


def export_model(
    trainer: Trainer, net: nn.Module, *, name: str, model_dir: Path, title: str,
    description: str, license_name: str, attribution: str, settings: dict[str, Any],
    data: dict[str, Any], metrics: dict[str, Any], seconds: float,
) -> Exported:
    """Write `net` (the served generator: `Trainer.served_generator()`) as model `name`."""
    config = trainer.config
    arch = architecture(config.size, config.nz, config.ngf)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    model_dir.mkdir(parents=True, exist_ok=True)
    weights = weights_path(model_dir, name)
    partial = weights.with_name(f".{weights.name}.partial")
    save_file(tensors, str(partial), metadata={"producer": "atelier train", "model": name})
    # The file must load the way the server loads it, and give what the trainer sampled.
    served = load_gan(arch, partial, "cpu")
    probe = torch.randn(4, config.nz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = copy.deepcopy(net).cpu().float()(probe)
        if not torch.allclose(served(probe), expected, atol=1e-5):
            partial.unlink(missing_ok=True)
            raise TrainingError("the exported generator does not reproduce the trained one")
    sha = sha256_of(partial)
    partial.replace(weights)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    manifest = Manifest.model_validate(_clean({
        "name": name, "kind": "gan", "title": title, "description": description,
        "output_size": [config.size, config.size], "architecture": arch,
        "license": {"name": license_name, "attribution": attribution},
        "weights": {"sha256": sha, "converter": "none", "source": {"type": "local"}},
        "trained": {
            "finished": now.isoformat().replace("+00:00", "Z"), "steps": trainer.step,
            "images_seen": trainer.images_seen, "seconds": round(seconds, 1),
            "device": str(trainer.device), "settings": settings, "data": data,
            "metrics": metrics,
        },
    }))
    text = manifest.to_toml(
        f"Trained here by `atelier train` ({manifest.trained.finished if manifest.trained else ''}"
        ").\nThe weights are this machine's own (`[weights.source] type = \"local\"`): nothing"
        " to pull;\nthe model is available while its weights file has the sha256 below.")
    if Manifest.model_validate(tomllib.loads(text)) != manifest:  # what the catalog will read
        raise TrainingError("the manifest does not read back as written")
    path = trained_dir(model_dir) / f"{name}.toml"
    _write_atomically(path, text.encode())
    return Exported(manifest.model_copy(update={"path": path}), weights, path)
