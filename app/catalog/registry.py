"""What the catalog holds and whether each model's weights are on disk."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.catalog.manifest import Manifest, load_manifests
from app.catalog.pull import is_pulled, weights_path


class ModelStatus(StrEnum):
    AVAILABLE = "available"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class ModelEntry:
    manifest: Manifest
    status: ModelStatus
    weights: Path
    message: str | None = None

    @property
    def name(self) -> str:
        return self.manifest.name


def pull_command(name: str) -> str:
    return f"atelier models pull {name}"


class Catalog:
    def __init__(self, catalog_dir: Path, model_dir: Path) -> None:
        self.catalog_dir = catalog_dir
        self.model_dir = model_dir
        self.manifests = load_manifests(catalog_dir)
        # Once present, weights stay; a missing model is re-checked on every call so that a
        # `pull` while the service runs makes it available without a restart.
        self._available: dict[str, ModelEntry] = {}

    def entry(self, name: str) -> ModelEntry | None:
        if (cached := self._available.get(name)) is not None:
            return cached
        manifest = self.manifests.get(name)
        if manifest is None:
            return None
        path = weights_path(self.model_dir, name)
        if is_pulled(manifest, self.model_dir):
            entry = self._available[name] = ModelEntry(manifest, ModelStatus.AVAILABLE, path)
            return entry
        return ModelEntry(
            manifest,
            ModelStatus.UNAVAILABLE,
            path,
            f"weights of {name!r} are not pulled; run `{pull_command(name)}`",
        )

    def entries(self) -> list[ModelEntry]:
        return [e for name in self.manifests if (e := self.entry(name)) is not None]
