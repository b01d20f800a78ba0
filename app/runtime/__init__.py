"""The model runtime: concrete work kinds, the executor that runs them on a device, and
`build_pool`, the one place that wires a worker pool from the settings."""

from app.runtime.build import build_pool
from app.runtime.device import DeviceRuntime
from app.runtime.work import GENERATE_LANE, STYLIZE_LANE, GenerateWork, StylizeWork

__all__ = [
    "GENERATE_LANE",
    "STYLIZE_LANE",
    "DeviceRuntime",
    "GenerateWork",
    "StylizeWork",
    "build_pool",
]
