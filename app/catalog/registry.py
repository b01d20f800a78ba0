"""What the catalog holds and whether each model's weights are on disk."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from app.catalog.manifest import Manifest, load_manifests
from app.catalog.pull import is_pulled, weights_path

# Manifests of models trained here (`atelier train`), next to their weights: a folder of
# the model dir, so they are as local (and as git-ignored) as the weights they describe.
TRAINED_SUBDIR = "trained"


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


@dataclass(frozen=True)
class Reloaded:
    """What a `Catalog.reload()` changed, by model name."""

    added: list[str]
    removed: list[str]
    changed: list[str]


def pull_command(name: str) -> str:
    return f"atelier models pull {name}"


def trained_dir(model_dir: Path) -> Path:
    """Where `atelier train` writes the manifests of the models it makes."""
    return model_dir / TRAINED_SUBDIR


def read_manifests(catalog_dir: Path, model_dir: Path) -> dict[str, Manifest]:
    """The shipped manifests (`catalog_dir/*.toml`), then the trained ones
    (`model_dir/trained/*.toml`); a name may appear once in all."""
    manifests = load_manifests(catalog_dir)
    for name, manifest in load_manifests(trained_dir(model_dir)).items():
        if name in manifests:
            raise ValueError(f"duplicate model name {name!r} in {manifest.path}")
        manifests[name] = manifest
    return manifests


class Catalog:
    def __init__(self, catalog_dir: Path, model_dir: Path) -> None:
        self.catalog_dir = catalog_dir
        self.model_dir = model_dir
        # `manifests` is replaced whole by `reload`, never changed in place: a reader holding
        # the old dict keeps a consistent view.
        self.manifests = read_manifests(catalog_dir, model_dir)
        # Once present, weights stay; a missing model is re-checked on every call so that a
        # `pull` while the service runs makes it available without a restart.
        self._available: dict[str, ModelEntry] = {}
        self._lock = threading.Lock()

    def entry(self, name: str) -> ModelEntry | None:
        with self._lock:
            manifests = self.manifests
            if (cached := self._available.get(name)) is not None:
                return cached
        manifest = manifests.get(name)
        if manifest is None:
            return None
        path = weights_path(self.model_dir, name)
        if is_pulled(manifest, self.model_dir):  # outside the lock: may hash a file
            entry = ModelEntry(manifest, ModelStatus.AVAILABLE, path)
            with self._lock:
                if self.manifests is manifests:  # not reloaded meanwhile
                    self._available[name] = entry
            return entry
        if manifest.is_local:
            message = (f"weights of {name!r} (trained here) are missing or are not the ones its"
                       f" manifest pins: train it again, or delete {manifest.path}")
        else:
            message = f"weights of {name!r} are not pulled; run `{pull_command(name)}`"
        return ModelEntry(manifest, ModelStatus.UNAVAILABLE, path, message)

    def entries(self) -> list[ModelEntry]:
        return [e for name in self.manifests if (e := self.entry(name)) is not None]

    def reload(self) -> Reloaded:
        """Read the manifests again: new models appear, removed ones disappear, and every
        model's weights are checked again. Safe while other threads call `entry`. A manifest
        that does not parse raises (ValueError, OSError) and the catalog stays as it was."""
        fresh = read_manifests(self.catalog_dir, self.model_dir)
        with self._lock:
            old = self.manifests
            self.manifests = fresh
            self._available = {}
        return Reloaded(
            added=sorted(fresh.keys() - old.keys()),
            removed=sorted(old.keys() - fresh.keys()),
            changed=sorted(n for n in fresh.keys() & old.keys() if fresh[n] != old[n]),
        )
