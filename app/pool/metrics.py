"""Prometheus metrics of the pool, on a registry of their own so several pools can coexist."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class PoolMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_length = Gauge(
            "atelier_queue_length", "Work items waiting for a worker.", ["lane"], registry=r
        )
        self.in_flight = Gauge(
            "atelier_in_flight", "Work items admitted and not yet finished.", ["lane"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "atelier_queue_wait_seconds", "Time from admission to the start of compute.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.compute = Histogram(
            "atelier_compute_seconds", "Compute time of one batch.", ["kind"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.batch_images = Histogram(
            "atelier_batch_images", "Images per forward pass.", ["kind"],
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.rejected = Counter(
            "atelier_rejected_total", "Work refused at admission.", ["lane", "reason"],
            registry=r,
        )
        self.dropped = Counter(
            "atelier_dropped_total", "Admitted work dropped before compute.", ["lane", "reason"],
            registry=r,
        )
        self.failed = Counter(
            "atelier_failed_batches_total", "Batches that raised.", ["error"], registry=r
        )
        self.oom_splits = Counter(
            "atelier_oom_splits_total", "Batches split after running out of memory.", registry=r
        )
        self.worker_restarts = Counter(
            "atelier_worker_restarts_total", "Dead worker threads restarted.", registry=r
        )
