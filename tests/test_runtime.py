"""The device runtime loads the models its pool's lanes run, and others only when asked."""

from __future__ import annotations

import torch

from app.catalog import Catalog
from app.runtime import GENERATE_LANE, STYLIZE_LANE, GenerateWork, build_pool
from app.runtime.device import DeviceRuntime
from tests.conftest import make_settings


def test_a_generate_only_pool_loads_no_vgg_and_a_style_only_pool_no_gan(
        real_catalog: Catalog) -> None:
    settings = make_settings()
    generate_only = build_pool(settings, real_catalog, lanes=(GENERATE_LANE,))
    style_only = build_pool(settings, real_catalog, lanes=(STYLIZE_LANE,))
    runtimes = []
    for pool in (generate_only, style_only):
        runtime = pool.workers[0].executor
        assert isinstance(runtime, DeviceRuntime)
        runtime.load()
        runtimes.append(runtime)
    (gan_runtime, vgg_runtime) = runtimes
    assert set(gan_runtime.generators) == {"dcgan-faces-64"} and not gan_runtime.vggs
    assert set(vgg_runtime.vggs) == {"vgg19-caffe"} and not vgg_runtime.generators
    # A model of another kind still loads when work asks for it.
    work = GenerateWork(model="dcgan-faces-64", latents=torch.zeros(1, 100))
    (images,) = vgg_runtime.run([work], max_images=1)
    assert images.shape == (1, 64, 64, 3) and images.dtype == torch.uint8
