"""GAN sampling on the real pulled weights: seeds, truncation, interpolation, batching."""

from __future__ import annotations

import pytest
import torch

from app.catalog import Catalog
from app.engines import gan
from app.nets.loading import load_gan


def test_a_latent_depends_only_on_its_seed() -> None:
    assert torch.equal(gan.latent_for_seed(5, 100), gan.latent_for_seed(5, 100))
    assert not torch.equal(gan.latent_for_seed(5, 100), gan.latent_for_seed(6, 100))
    batch = gan.latents_for_seeds(5, 3, 100)
    assert torch.equal(batch[2], gan.latent_for_seed(7, 100))


def test_truncation_bounds_latents_and_resamples_only_outliers() -> None:
    plain = gan.latent_for_seed(11, 100)
    truncated = gan.latent_for_seed(11, 100, truncation=0.5)
    assert truncated.abs().max() <= 0.5
    inside = plain.abs() <= 0.5
    assert torch.equal(truncated[inside], plain[inside])
    assert not torch.equal(truncated, plain)


def test_slerp_keeps_ends_and_walks_the_sphere() -> None:
    a, b = gan.latent_for_seed(1, 100), gan.latent_for_seed(2, 100)
    path = gan.slerp(a, b, 9)
    assert path.shape == (9, 100)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)
    # A straight line would shrink the norm midway; the great circle keeps it near both ends.
    assert path[4].norm() > 0.95 * min(a.norm(), b.norm())
    assert ((a + b) / 2).norm() < path[4].norm()


@pytest.mark.parametrize("truncation", [1e-30, 1e-45, 1e-100])
def test_slerp_of_latents_truncated_to_almost_nothing_stays_finite(truncation: float) -> None:
    """Their float32 norm is 0: a walk between them must not divide by it (NaN latents made
    all-black frames)."""
    a = gan.latent_for_seed(1, 100, truncation)
    b = gan.latent_for_seed(2, 100, truncation)
    path = gan.slerp(a, b, 5)
    assert torch.isfinite(path).all()
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)


def test_real_generator_makes_faces_shaped_images(real_catalog: Catalog) -> None:
    entry = real_catalog.entry("dcgan-faces-64")
    assert entry is not None
    net = load_gan(entry.manifest.architecture, entry.weights, "cpu")
    images = gan.sample(net, gan.latents_for_seeds(0, 4, 100), torch.device("cpu"), 64)
    assert images.shape == (4, 64, 64, 3) and images.dtype == torch.uint8
    assert images.float().std() > 20  # real weights paint, random ones would be flat or noise
    assert not torch.equal(images[0], images[1])


def test_a_seed_gives_the_same_image_alone_or_in_any_batch(real_catalog: Catalog) -> None:
    entry = real_catalog.entry("dcgan-faces-64")
    assert entry is not None
    torch.set_num_threads(1)  # as the CPU workers run (ATELIER_TORCH_THREADS=1)
    net = load_gan(entry.manifest.architecture, entry.weights, "cpu")
    cpu = torch.device("cpu")
    alone = gan.sample(net, gan.latents_for_seeds(100, 1, 100), cpu, 64)[0]
    for first, n in [(100, 7), (97, 5), (90, 33)]:
        batch = gan.sample(net, gan.latents_for_seeds(first, n, 100), cpu, 64)
        assert torch.equal(batch[100 - first], alone), (first, n)
