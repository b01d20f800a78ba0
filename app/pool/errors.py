"""Why the pool did not return a result. Fronts map these to their own protocol."""


class PoolError(Exception):
    pass


class QueueFull(PoolError):
    def __init__(self, capacity: int, retry_after_s: int) -> None:
        super().__init__(f"the work queue is full ({capacity} items admitted)")
        self.capacity = capacity
        self.retry_after_s = retry_after_s


class PoolClosed(PoolError):
    def __init__(self) -> None:
        super().__init__("the worker pool is shutting down and admits no new work")


class DeadlineExceeded(PoolError):
    def __init__(self, timeout_s: float | None = None) -> None:
        msg = "the request's deadline passed before its result was ready"
        if timeout_s is not None:
            msg += f" (timeout {timeout_s:g} s)"
        super().__init__(msg)
        self.timeout_s = timeout_s


class OutOfMemory(PoolError):
    def __init__(self, device: str) -> None:
        super().__init__(f"out of memory on {device} even for a single image")
        self.device = device


class WorkerCrashed(PoolError):
    def __init__(self, worker: str) -> None:
        super().__init__(f"worker {worker} died while running this work; it is being restarted")
        self.worker = worker
