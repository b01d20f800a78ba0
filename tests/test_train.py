"""`atelier train` on tiny synthetic data: losses, checkpoints, exact resume, Ctrl-C, the
refusals, KID/FID, and the trained model served by a running server after a reload."""

from __future__ import annotations

import argparse
import io
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from asgi_lifespan import LifespanManager
from PIL import Image

from app.api.routes import admin
from app.catalog import Catalog, ModelStatus
from app.catalog.manifest import Manifest
from app.catalog.pull import PullError, pull, weights_path
from app.catalog.registry import trained_dir
from app.main import create_app
from app.nets.loading import load_gan
from app.settings import PROJECT_ROOT, Settings
from app.training import session as session_module
from app.training.cli import add_parser
from app.training.metrics import Evaluator, VGGFeatures, fid, kid
from app.training.nets import Discriminator, build
from app.training.session import load_checkpoint, save_checkpoint
from app.training.trainer import TrainConfig, Trainer
from tests.conftest import MODEL_DIR, LiveServer, make_settings
from tests.inprocess import StubRuntime

# 64 px (the served size) with few feature maps: a step takes milliseconds on the CPU.
TINY = TrainConfig(size=64, batch_size=8, nz=16, ngf=8, ndf=8)
TINY_ARGS = ["--batch-size", "8", "--nz", "16", "--ngf", "8", "--ndf", "8", "--quiet",
             "--workers", "1", "--eval-images", "32"]


def make_images(folder: Path, count: int = 40, seed: int = 0) -> Path:
    """`count` small images (20-40 px, PNG and JPEG): a disc on a plain background."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        w, h = (int(v) for v in rng.integers(20, 40, size=2))
        yy, xx = np.mgrid[0:h, 0:w]
        cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, rng.uniform(4, 10)
        pixels = np.empty((h, w, 3), np.uint8)
        pixels[...] = rng.integers(0, 255, 3)
        pixels[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.{'png' if i % 2 else 'jpg'}")
    return folder


def tiny_images(count: int = 40, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 64, 64), dtype=torch.uint8, generator=generator)


def model_dir_with_real_weights(tmp_path: Path) -> Path:
    """A model dir of the test's own that holds (links to) the pulled weights."""
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in ("vgg19-caffe", "dcgan-faces-64"):
        for suffix in (".safetensors", ".json"):
            (cache / f"{name}{suffix}").symlink_to(MODEL_DIR / f"{name}{suffix}")
    return cache


def train(settings: Settings, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", *argv])
    code: int = args.func(settings, args)
    return code


# ---- the trainer ---------------------------------------------------------------------------


def test_a_few_steps_give_finite_losses() -> None:
    trainer = Trainer(TINY, tiny_images())
    for _ in range(3):
        trainer.train_step()
    rows = trainer.flush()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert all(np.isfinite(r[1]) and np.isfinite(r[2]) for r in rows)
    assert trainer.images_seen == 24
    net = trainer.served_generator(samples=64, batch=32)
    grid = trainer.sample_grid(net)
    assert grid.shape == (64, 64, 64, 3) and grid.dtype == torch.uint8

    minimax = Trainer(TrainConfig(**{**TINY.as_dict(), "loss": "minimax"}), tiny_images())
    minimax.train_step()
    (_, d_loss, g_loss), = minimax.flush()
    assert np.isfinite(d_loss) and g_loss < 0  # log(1 - D(G(z))) is negative


def test_the_checkpoint_round_trips(tmp_path: Path) -> None:
    trainer = Trainer(TINY, tiny_images())
    for _ in range(2):
        trainer.train_step()
    trainer.evals.append({"step": 2, "kid": 1.5, "kid_std": 0.0, "fid": 3.0, "images": 8})
    save_checkpoint(trainer.state_dict(), tmp_path / "checkpoint.pt")

    restored = Trainer(TINY, tiny_images())
    restored.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu")))
    assert restored.step == 2 and restored.history == trainer.history
    assert restored.evals == trainer.evals
    for mine, theirs in [(trainer.g, restored.g), (trainer.d, restored.d),
                         (trainer.ema, restored.ema)]:
        for (k, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(),
                                  strict=True):
            assert torch.equal(a, b), k
    for mine_opt, theirs_opt in [(trainer.opt_g, restored.opt_g),
                                 (trainer.opt_d, restored.opt_d)]:
        a_state, b_state = mine_opt.state_dict()["state"], theirs_opt.state_dict()["state"]
        assert a_state.keys() == b_state.keys()
        for key in a_state:
            for name in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(a_state[key][name], b_state[key][name])
    assert torch.equal(trainer.noise_rng.get_state(), restored.noise_rng.get_state())
    assert torch.equal(trainer.flip_rng.get_state(), restored.flip_rng.get_state())
    assert torch.equal(trainer.fixed_noise, restored.fixed_noise)

    other = TrainConfig(**{**TINY.as_dict(), "lr": 1e-3})
    with pytest.raises(ValueError, match="other settings"):
        Trainer(other, tiny_images()).load_state_dict(trainer.state_dict())


def test_a_resumed_run_continues_exactly(tmp_path: Path) -> None:
    """6 steps straight == 3 steps, a checkpoint on disk, a new trainer, 3 more (bit for bit
    on the CPU); the steps cross an epoch boundary (5 steps an epoch) and use flips."""
    straight = Trainer(TINY, tiny_images())
    for _ in range(6):
        straight.train_step()
    straight.flush()

    first = Trainer(TINY, tiny_images())
    for _ in range(3):
        first.train_step()
    save_checkpoint(first.state_dict(), tmp_path / "checkpoint.pt")
    del first
    torch.manual_seed(1234)  # whatever the process did meanwhile
    second = Trainer(TINY, tiny_images())
    second.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt", torch.device("cpu")))
    for _ in range(3):
        second.train_step()
    second.flush()

    assert second.history == straight.history  # exact equality, every step's D and G loss
    for (k, a), (_, b) in zip(straight.ema.state_dict().items(),
                              second.ema.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_the_128_px_variant_has_one_more_block_and_loads_as_served(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    g, d = build(128, nz=8, ngf=4, ndf=4, seed=0)
    g64, d64 = build(64, nz=8, ngf=4, ndf=4, seed=0)
    assert len(g.main) == len(g64.main) + 3 and len(d.main) == len(d64.main) + 3
    assert g(torch.randn(2, 8)).shape == (2, 3, 128, 128)
    assert d(torch.randn(2, 3, 128, 128)).shape == (2,)
    assert isinstance(d, Discriminator)
    from app.training import cli, nets

    assert cli.SIZES == nets.SIZES  # the parser's choices, kept free of torch imports
    save_file(g.state_dict(), str(tmp_path / "g.safetensors"))
    served = load_gan({"type": "dcgan", "nz": 8, "ngf": 4, "nc": 3, "size": 128},
                      tmp_path / "g.safetensors", "cpu")
    assert served(torch.randn(1, 8)).shape == (1, 3, 128, 128)


# ---- metrics -------------------------------------------------------------------------------


def test_kid_and_fid_of_identical_sets_are_about_zero(real_catalog: Catalog,
                                                      tmp_path: Path) -> None:
    from app.training.data import square
    from app.training.metrics import _polynomial_kernel

    features = VGGFeatures.from_catalog(real_catalog, "vgg19-caffe", torch.device("cpu"))
    discs = torch.stack([square(torch.from_numpy(np.array(Image.open(p))), 64, "center")[0]
                         for p in sorted(make_images(tmp_path, 64).iterdir())])
    real, noise = features(discs), features(tiny_images(64, seed=5))
    assert real.shape == (64, 512) and real.dtype == torch.float64
    different, _ = kid(real, noise)
    same, _ = kid(real, real)
    assert different > 0
    assert abs(same) < 0.05 * different
    # Its one deviation from 0: the cross term pairs each image with itself too (the
    # estimator assumes independent sets), -2/n (mean k(x, x) - mean k(x, y), x != y).
    k, n = _polynomial_kernel(real, real), len(real)
    off_diagonal = (k.sum() - k.diagonal().sum()) / (n * (n - 1))
    assert same == pytest.approx(float(-2 / n * (k.diagonal().mean() - off_diagonal)))
    # Two halves of one sample: 0 within the subsets' noise (unbiased).
    halves, spread = kid(real[:32], real[32:], subset_size=16, subsets=100)
    assert abs(halves) < 0.05 * different and spread > 0
    assert fid(real, real) < 1e-6 * fid(real, noise)

    # What a run reports (features in units of the real set's RMS): the data against
    # itself ~0, against noise large; blur is worse than none.
    evaluator = Evaluator(features, discs)
    assert evaluator.real.square().sum(1).mean() / 512 == pytest.approx(1.0)
    itself, to_noise = evaluator(discs), evaluator(tiny_images(64, seed=5))
    assert abs(itself.kid) < 0.05 * to_noise.kid and itself.fid < 1e-6 * to_noise.fid
    blurred = torch.nn.functional.avg_pool2d(discs.float(), 5, 1, 2).round().to(torch.uint8)
    assert itself.kid < evaluator(blurred).kid < to_noise.kid


def test_fid_matches_the_closed_form_and_a_general_matrix_square_root() -> None:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=generator, dtype=torch.float64)
    b = torch.randn(4000, 3, generator=generator, dtype=torch.float64) * 2 + 1
    # N(0, I) vs N(1, 4I) in 3-d: |mu|^2 + tr(I) + tr(4I) - 2 tr(2I) = 3 + 3 + 12 - 12 = 6
    assert fid(a, b) == pytest.approx(6.0, rel=0.1)
    s1 = torch.cov(a.T) + 0.5 * torch.eye(3, dtype=torch.float64)
    s2 = torch.cov(b.T)
    general = torch.linalg.eigvals(s1 @ s2).real.clamp(min=0).sqrt().sum()
    x = torch.randn(50000, 3, generator=generator, dtype=torch.float64)
    sampled_1 = x @ torch.linalg.cholesky(s1).T
    sampled_2 = torch.randn(50000, 3, generator=generator, dtype=torch.float64) @ (
        torch.linalg.cholesky(s2).T)
    expected = (s1.trace() + s2.trace() - 2 * general).item()
    assert fid(sampled_1, sampled_2) == pytest.approx(expected, abs=0.15)


# ---- the command: refusals -----------------------------------------------------------------


def test_train_refuses_bad_data_clearly(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    settings = make_settings(model_dir=tmp_path / "cache")
    run = ["--run-dir", str(tmp_path / "run"), *TINY_ARGS]

    def refused(data: Path, *extra: str) -> str:
        assert train(settings, "--data", str(data), "--name", "x", *run, *extra) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "does not exist" in refused(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert "no images in" in refused(tmp_path / "empty")
    assert "has 5 usable images; training needs at least 32" in refused(
        make_images(tmp_path / "few", 5))
    data = make_images(tmp_path / "data", 34)
    (data / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "empty.png").write_bytes(b"")
    err = refused(data)
    assert "2 of 36 images" in err and "broken.jpg" in err and "--skip-unreadable" in err
    assert "--batch-size: 64 is more than the 34 images" in refused(
        data, "--skip-unreadable", "--batch-size", "64")
    assert "not a catalog name" in refused(data, "--name", "Not A Name")
    assert "is a model of the catalog" in refused(data, "--name", "dcgan-faces-64")
    assert "no checkpoint" in refused(data, "--resume")
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_disk_without_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(session_module.shutil, "disk_usage",
                        lambda _path: usage(10 << 30, 10 << 30, 5 << 20))
    settings = make_settings(model_dir=tmp_path / "cache")
    code = train(settings, "--data", str(make_images(tmp_path / "data")), "--name", "x",
                 "--run-dir", str(tmp_path / "run"), *TINY_ARGS)
    err = capsys.readouterr().err
    assert code == 1
    assert "not enough disk space" in err and "5 MiB are free" in err
    assert "Traceback" not in err


# ---- the command: a whole run, Ctrl-C, resume, export ------------------------------------


def test_ctrl_c_checkpoints_exits_130_and_the_run_resumes(tmp_path: Path) -> None:
    data = make_images(tmp_path / "data")
    run_dir = tmp_path / "run"
    cache = model_dir_with_real_weights(tmp_path)
    env = {**os.environ, "ATELIER_MODEL_DIR": str(cache), "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.training", "train", "--data", str(data), "--name", "tiny",
         "--run-dir", str(run_dir), "--steps", "100000", "--threads", "1", *TINY_ARGS],
        cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "log.jsonl").exists():  # the first progress report: training
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted at step" in err
    state = load_checkpoint(run_dir / "checkpoint.pt", torch.device("cpu"))
    stopped = int(state["step"])
    assert stopped >= 1 and len(state["history"]) == stopped
    assert not (cache / "tiny.safetensors").exists()  # interrupted: nothing exported

    # The same command with --resume (and a reachable end) continues and exports.
    settings = make_settings(model_dir=cache)
    assert train(settings, "--data", str(data), "--name", "tiny", "--run-dir", str(run_dir),
                 "--steps", str(stopped + 3), "--resume", *TINY_ARGS) == 0
    state = load_checkpoint(run_dir / "checkpoint.pt", torch.device("cpu"))
    assert int(state["step"]) == stopped + 3
    manifest = Manifest.from_file(trained_dir(cache) / "tiny.toml")
    assert manifest.trained is not None and manifest.trained.steps == stopped + 3
    # the same run without --resume/--restart is refused, not overwritten
    assert train(settings, "--data", str(data), "--name", "tiny", "--run-dir", str(run_dir),
                 *TINY_ARGS) == 2


def test_a_trained_model_is_served_after_a_reload(tmp_path: Path) -> None:
    cache = model_dir_with_real_weights(tmp_path)
    settings = make_settings(model_dir=cache)
    app = create_app(settings)
    app.include_router(admin.router)  # until app/main.py includes it
    with LiveServer(app) as server, server.client() as client:
        before = {m["name"] for m in client.get("/models").json()["models"]}
        assert "faces-tiny" not in before
        assert client.post("/generate", json={"model": "faces-tiny"}).status_code == 404

        assert train(settings, "--data", str(make_images(tmp_path / "data")), "--name",
                     "faces-tiny", "--run-dir", str(tmp_path / "run"), "--steps", "4",
                     "--sample-every", "2", *TINY_ARGS) == 0

        reloaded = client.post("/models/reload")
        assert reloaded.status_code == 200, reloaded.text
        body = reloaded.json()
        assert body["added"] == ["faces-tiny"] and body["removed"] == []
        listed = {m["name"]: m for m in body["models"]}
        assert listed["faces-tiny"]["status"] == "available"
        assert listed["faces-tiny"]["output_size"] == [64, 64]

        response = client.post("/generate", json={"model": "faces-tiny", "seed": 7})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        assert response.headers["x-model"] == "faces-tiny"
        image = Image.open(io.BytesIO(response.content))
        assert image.size == (64, 64)
        again = client.post("/generate", json={"model": "faces-tiny", "seed": 7})
        assert again.content == response.content  # a seed is an image, as for any model

        # Retrained under the same name: after a reload the new weights are served.
        assert train(settings, "--data", str(tmp_path / "data"), "--name", "faces-tiny",
                     "--run-dir", str(tmp_path / "run2"), "--steps", "6", "--seed", "5",
                     *TINY_ARGS) == 0
        body = client.post("/models/reload").json()
        assert body["changed"] == ["faces-tiny"] and body["reloaded_weights"] is True
        retrained = client.post("/generate", json={"model": "faces-tiny", "seed": 7})
        assert retrained.status_code == 200
        assert retrained.content != response.content

        # Removed from disk + reloaded: gone from the catalog.
        (trained_dir(cache) / "faces-tiny.toml").unlink()
        assert client.post("/models/reload").json()["removed"] == ["faces-tiny"]
        assert client.post("/generate", json={"model": "faces-tiny"}).status_code == 404

    manifest_samples = sorted((tmp_path / "run" / "samples").glob("step-*.png"))
    assert [p.name for p in manifest_samples] == ["step-0000002.png", "step-0000004.png"]


def test_the_trained_manifest_in_the_catalog_and_pull(tmp_path: Path) -> None:
    cache = model_dir_with_real_weights(tmp_path)
    settings = make_settings(model_dir=cache)
    assert train(settings, "--data", str(make_images(tmp_path / "data")), "--name", "mine",
                 "--run-dir", str(tmp_path / "run"), "--steps", "2", "--title", "Mine",
                 "--crop", "resize", "--no-flip", *TINY_ARGS) == 0
    catalog = Catalog(settings.catalog_dir, cache)
    entry = catalog.entry("mine")
    assert entry is not None and entry.status is ModelStatus.AVAILABLE
    manifest = entry.manifest
    assert manifest.is_local and manifest.title == "Mine"
    assert manifest.architecture == {"type": "dcgan", "nz": 16, "ngf": 8, "nc": 3, "size": 64}
    trained = manifest.trained
    assert trained is not None
    assert trained.settings["lr"] == 2e-4 and trained.settings["flip"] is False
    assert trained.data["images"] == 40 and trained.data["crop"] == "resize"
    assert trained.metrics["images"] == 32 and "relu5_4" in trained.metrics["features"]
    assert np.isfinite(trained.metrics["kid"]) and trained.metrics["fid"] >= 0
    assert pull(manifest, cache) is False  # nothing to fetch, and present

    # Weights that no longer match: unavailable with its own message; pull says why.
    weights_path(cache, "mine").write_bytes(b"changed")
    catalog.reload()
    entry = catalog.entry("mine")
    assert entry is not None and entry.status is ModelStatus.UNAVAILABLE
    assert "trained here" in (entry.message or "")
    with pytest.raises(PullError, match="nothing to pull"):
        pull(manifest, cache)


def test_reload_reports_changes_and_keeps_the_catalog_on_a_broken_manifest(
    tmp_path: Path,
) -> None:
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    vgg = (PROJECT_ROOT / "models" / "vgg19-caffe.toml").read_text()
    (catalog_dir / "vgg19-caffe.toml").write_text(vgg)
    catalog = Catalog(catalog_dir, tmp_path / "cache")
    assert list(catalog.manifests) == ["vgg19-caffe"]
    faces = (PROJECT_ROOT / "models" / "dcgan-faces-64.toml").read_text()
    (catalog_dir / "dcgan-faces-64.toml").write_text(faces)
    (catalog_dir / "vgg19-caffe.toml").write_text(vgg.replace("VGG19 (Caffe", "VGG-19 (Caffe"))
    changes = catalog.reload()
    assert (changes.added, changes.removed, changes.changed) == (
        ["dcgan-faces-64"], [], ["vgg19-caffe"])
    (catalog_dir / "vgg19-caffe.toml").unlink()
    (catalog_dir / "broken.toml").write_text("name = ")
    with pytest.raises(ValueError):
        catalog.reload()
    assert sorted(catalog.manifests) == ["dcgan-faces-64", "vgg19-caffe"]  # unchanged
    (catalog_dir / "broken.toml").unlink()
    assert catalog.reload().removed == ["vgg19-caffe"]


@pytest.mark.anyio
async def test_reload_is_refused_from_elsewhere_without_the_admin_key() -> None:
    settings = make_settings().model_copy(update={"admin_key": "s3cret-admin"})
    app = create_app(settings, executor_factory=lambda _device: StubRuntime())
    app.include_router(admin.router)

    async def post(client_host: str, headers: dict[str, str] | None = None) -> httpx.Response:
        transport = httpx.ASGITransport(app=manager.app, client=(client_host, 40000))
        async with httpx.AsyncClient(transport=transport,
                                     base_url="http://127.0.0.1:8000") as client:
            return await client.post("/models/reload", headers=headers or {})

    async with LifespanManager(app, startup_timeout=60) as manager:
        refused = await post("203.0.113.9")
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["type"] == "urn:atelier:problem:admin-refused"
        assert (await post("203.0.113.9", {"authorization": "Bearer wrong"})).status_code == 403
        ok = await post("203.0.113.9", {"authorization": "Bearer s3cret-admin"})
        assert ok.status_code == 200 and "models" in ok.json()
        assert (await post("203.0.113.9", {"x-admin-key": "s3cret-admin"})).status_code == 200
        assert (await post("127.0.0.1")).status_code == 200
        assert (await post("::1")).status_code == 200
        # loopback, but relayed by a proxy for someone else: not loopback
        assert (await post("127.0.0.1", {"x-forwarded-for": "203.0.113.9"})).status_code == 403
