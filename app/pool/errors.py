"""Why the pool did not return a result; each declares its problem type (see app.errors)."""

from __future__ import annotations

from app.errors import AtelierError


class PoolError(AtelierError):
    status = 503


class QueueFull(PoolError):
    slug = "queue-full"
    title = "Service busy"

    def __init__(self, capacity: int, retry_after_s: int) -> None:
        super().__init__(f"the work queue is full ({capacity} items admitted)")
        self.capacity = capacity
        self.retry_after_s = retry_after_s


class PoolClosed(PoolError):
    slug = "shutting-down"
    title = "Shutting down"
    retry_after_s = 5

    def __init__(self) -> None:
        super().__init__("the worker pool is shutting down and admits no new work")


class DeadlineExceeded(PoolError):
    status = 504
    slug = "timeout"
    title = "Deadline exceeded"

    def __init__(self, timeout_s: float | None = None) -> None:
        msg = "the request's deadline passed before its result was ready"
        if timeout_s is not None:
            msg += f" (timeout {timeout_s:g} s)"
        super().__init__(msg)
        self.timeout_s = timeout_s


class OutOfMemory(PoolError):
    slug = "out-of-memory"
    title = "Out of device memory"
    retry_after_s = 1

    def __init__(self, device: str) -> None:
        super().__init__(f"out of memory on {device} even for a single image")
        self.device = device


class WorkerCrashed(PoolError):
    # The supervisor restarts the worker at once: retrying is expected to work.
    slug = "worker-crashed"
    title = "Worker crashed"
    retry_after_s = 1

    def __init__(self, worker: str) -> None:
        super().__init__(f"worker {worker} died while running this work; it is being restarted")
        self.worker = worker
