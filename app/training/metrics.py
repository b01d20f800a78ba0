"""Offline quality metrics: KID and FID on the project's own VGG19 features.

Features: the catalog's `vgg19-caffe` network (no download at run time), images at the
model's own size (64 or 128 px) in its Caffe input space, `relu5_4` activations averaged over
their spatial positions: one 512-d vector per image; then divided by one number, the root
mean square of the real set's features (so the real features have mean x.x / d = 1). Raw,
these features are large (x.x / d about 25 on faces): the cubic kernel's cubic term then
swamps the rest and the score mostly measures feature energy (a blurry face scored like a
grey square). In these units KID rises steadily with blur (Gaussian blur of sigma 0.5, 1,
2, 3 px on 64 px faces: 0.10, 0.43, 1.6, 2.3; a grey square 3.1, uniform noise 6.8).

KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD between the two
feature sets with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
random subsets (100 subsets of min(1000, n) images; the spread is their standard deviation,
0 when a set has no more than 1000 images). Unbiased: two samples of the same distribution
score 0 on average, whatever their size.

FID (Heusel et al. 2017): the Frechet distance of Gaussians fitted to the two sets,
|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2). The trace of the square root is the sum
of the square roots of the eigenvalues of S1^1/2 S2 S1^1/2 (symmetric, so `eigvalsh`; S1^1/2
itself from `eigh`), in float64; no scipy. FID is biased upwards for small sets: compare
values of the same set size only.

Neither is comparable to the Inception-v3 numbers of papers: another network, another
layer, other image sizes. They rank checkpoints of one run, or runs on one data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from app.catalog import Catalog, ModelStatus
from app.engines.style.space import InputSpace, input_space
from app.nets.loading import load_vgg
from app.nets.vgg import VGG19Features

FEATURE_LAYER = "relu5_4"
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


class FeaturesUnavailable(LookupError):
    """The feature network is not in the catalog or its weights are not pulled."""


@dataclass(frozen=True)
class Score:
    kid: float
    kid_std: float
    fid: float
    images: int  # per set

    def as_dict(self) -> dict[str, Any]:
        return {"kid": self.kid, "kid_std": self.kid_std, "fid": self.fid,
                "images": self.images}


class VGGFeatures:
    """uint8 images [N, 3, H, W] to float64 features [N, 512] on the CPU."""

    def __init__(self, vgg: VGG19Features, space: InputSpace, device: torch.device,
                 name: str = "vgg19-caffe", batch_size: int = 50) -> None:
        self.vgg, self.space, self.device = vgg, space, device
        self.name, self.batch_size = name, batch_size
        self.mean = torch.tensor(space.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(space.std, device=device).view(1, 3, 1, 1)

    @classmethod
    def from_catalog(cls, catalog: Catalog, name: str, device: torch.device) -> VGGFeatures:
        entry = catalog.entry(name)
        if entry is None or entry.status is not ModelStatus.AVAILABLE:
            why = "is not in the catalog" if entry is None else (entry.message or "unavailable")
            raise FeaturesUnavailable(f"the metric network {name!r} {why}")
        if entry.manifest.kind != "vgg":
            raise FeaturesUnavailable(f"the metric network {name!r} is not a VGG")
        vgg = load_vgg(entry.manifest.architecture, entry.weights, str(device),
                       last_layer=FEATURE_LAYER)
        return cls(vgg, input_space(entry.manifest.architecture), device, name)

    def describe(self) -> str:
        return f"{self.name} {FEATURE_LAYER}, spatial mean (512-d), in units of the real RMS"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = []
        for chunk in torch.split(images, self.batch_size):
            x = chunk.to(self.device).float() / self.space.scale
            if self.space.bgr:
                x = x.flip(1)
            x = (x - self.mean) / self.std
            features = self.vgg(x, [FEATURE_LAYER])[FEATURE_LAYER]
            out.append(features.mean(dim=(2, 3)).double().cpu())
        return torch.cat(out)


def _polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD of two equally sized feature sets (cubic polynomial kernel)."""
    m = x.shape[0]
    kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within_x + within_y - 2 * kxy.mean())


def kid(real: torch.Tensor, fake: torch.Tensor, *, subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[float, float]:
    """KID (mean, standard deviation over subsets) of two feature sets [N, d]."""
    n = min(len(real), len(fake), subset_size)
    if n < 2:
        raise ValueError("KID needs at least two images per set")
    real, fake = real.double(), fake.double()
    if n == len(real) == len(fake):  # every subset would be the whole set
        return mmd2_unbiased(real, fake), 0.0
    generator = torch.Generator().manual_seed(seed)
    values = torch.tensor([
        mmd2_unbiased(real[torch.randperm(len(real), generator=generator)[:n]],
                      fake[torch.randperm(len(fake), generator=generator)[:n]])
        for _ in range(subsets)
    ], dtype=torch.float64)
    return float(values.mean()), float(values.std())


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    root: torch.Tensor = (vectors * values.clamp(min=0).sqrt()) @ vectors.T
    return root


def fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance of Gaussian fits of two feature sets [N, d] (N >= 2)."""
    real, fake = real.double(), fake.double()
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = torch.cov(real.T), torch.cov(fake.T)
    root1 = _sqrtm_psd(s1)
    product = root1 @ s2 @ root1
    product = (product + product.T) / 2  # symmetric up to rounding
    trace_root = torch.linalg.eigvalsh(product).clamp(min=0).sqrt().sum()
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * trace_root
    return max(0.0, float(value))


class Evaluator:
    """Scores generated images against a fixed set of real ones (features computed once)."""

    def __init__(self, features: VGGFeatures, real_images: torch.Tensor) -> None:
        self.features = features
        real = features(real_images)
        # Units of the real set's feature RMS: see the module's docstring.
        energy = float(real.square().sum(1).mean()) / real.shape[1]
        self.scale = energy ** -0.5 if energy > 0 else 1.0
        self.real = real * self.scale

    def __len__(self) -> int:
        return len(self.real)

    def __call__(self, fake_images: torch.Tensor) -> Score:
        fake = self.features(fake_images) * self.scale
        mean, std = kid(self.real, fake)
        return Score(kid=mean, kid_std=std, fid=fid(self.real, fake),
                     images=min(len(self.real), len(fake)))
