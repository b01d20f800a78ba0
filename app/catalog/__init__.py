"""The model catalog: manifests under models/, pulled weights in the cache, and `pull`."""

from app.catalog.manifest import Manifest, load_manifests
from app.catalog.registry import Catalog, ModelEntry, ModelStatus

__all__ = ["Catalog", "Manifest", "ModelEntry", "ModelStatus", "load_manifests"]
