"""Settings whose value depends on the machine resolve as documented."""

from __future__ import annotations

from tests.conftest import make_settings


def test_shape_buckets_are_on_for_gpus_and_off_on_the_cpu_unless_set() -> None:
    assert make_settings(devices="cpu").style_buckets() == 0
    assert make_settings(devices="cuda:0").style_buckets() == 64
    assert make_settings(devices="cuda:0", style_bucket_px=0).style_buckets() == 0
    assert make_settings(devices="cpu", style_bucket_px=32).style_buckets() == 32


def test_warm_up_and_style_batches_follow_the_device() -> None:
    assert not make_settings(devices="cpu").style_warmup_on()
    assert make_settings(devices="cuda:0").style_warmup_on()
    assert make_settings(devices="cpu").style_batch() == 1
    assert make_settings(devices="cuda:0").style_batch() == 8
