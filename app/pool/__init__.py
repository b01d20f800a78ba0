"""The async worker pool: bounded admission, dynamic batching, deadlines, one worker per device.

Nothing here knows about HTTP: fronts (FastAPI, the CLI, Ray Serve) submit typed work items
and await results.
"""

from app.pool.errors import (
    DeadlineExceeded,
    OutOfMemory,
    PoolClosed,
    PoolError,
    QueueFull,
    WorkerCrashed,
)
from app.pool.metrics import PoolMetrics
from app.pool.pool import Executor, Lane, WorkerPool
from app.pool.work import GenerateWork, StylizeWork, WorkItem, WorkStats

__all__ = [
    "DeadlineExceeded",
    "Executor",
    "GenerateWork",
    "Lane",
    "OutOfMemory",
    "PoolClosed",
    "PoolError",
    "PoolMetrics",
    "QueueFull",
    "StylizeWork",
    "WorkItem",
    "WorkStats",
    "WorkerCrashed",
    "WorkerPool",
]
