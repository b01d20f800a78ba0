"""The async worker pool: bounded admission, dynamic batching, deadlines, one worker per device.

Nothing here knows about HTTP or about models: fronts (FastAPI, the CLI, Ray Serve) submit
typed work items (app.runtime defines the concrete kinds) and await results.
"""

from app.pool.errors import (
    DeadlineExceeded,
    OutOfMemory,
    PoolClosed,
    PoolError,
    QueueFull,
    WorkerCrashed,
)
from app.pool.interface import Pool
from app.pool.metrics import PoolMetrics
from app.pool.pool import Executor, Lane, WorkerPool
from app.pool.work import WorkItem, WorkStats

__all__ = [
    "DeadlineExceeded",
    "Executor",
    "Lane",
    "OutOfMemory",
    "Pool",
    "PoolClosed",
    "PoolError",
    "PoolMetrics",
    "QueueFull",
    "WorkItem",
    "WorkStats",
    "WorkerCrashed",
    "WorkerPool",
]
