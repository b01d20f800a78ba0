"""The device runtime loads the models its pool's lanes run, and others only when asked."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.catalog import Catalog
from app.engines import style
from app.runtime import GENERATE_LANE, STYLIZE_LANE, GenerateWork, StylizeWork, build_pool
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


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_style_batches_get_the_cuda_graphs_setting(
        real_catalog: Catalog, monkeypatch: pytest.MonkeyPatch, cuda_graphs: bool) -> None:
    made: list[bool] = []

    class Recording(style.StyleBatch):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs["cuda_graphs"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(style, "StyleBatch", Recording)
    settings = make_settings(style_cuda_graphs=cuda_graphs)
    runtime = build_pool(settings, real_catalog, lanes=(STYLIZE_LANE,)).workers[0].executor
    assert isinstance(runtime, DeviceRuntime) and runtime.style_cuda_graphs is cuda_graphs
    runtime.load()
    grey = torch.full((24, 32, 3), 128, dtype=torch.uint8)
    work = StylizeWork(model="vgg19-caffe", content=grey, styles=[grey],
                       options=style.StyleOptions(size=32, steps=1))
    ((left, result),) = runtime.advance([work])
    assert left is work and isinstance(result, style.StyleResult)
    assert made == [cuda_graphs]
