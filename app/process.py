"""Process-wide tuning shared by every way of serving (uvicorn, Ray Serve replicas)."""

from __future__ import annotations

import gc

# Allocations (net of frees) of container objects between two young-generation collections;
# CPython's default is 700.
YOUNG_COLLECTION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Once start-up is done: freeze what it built and collect young objects less often.

    The process holds a few hundred thousand long-lived objects (torch, the models, the
    app) and every full collection walked all of them, ~0.1 s each, set off every few
    thousand requests. `gc.freeze` exempts them from collection for good (the garbage
    start-up left is collected first; a frozen object that later ends up in a reference
    cycle is never reclaimed, reference counting frees the rest). And with dozens of
    requests in flight the count of live objects swings by more than the default 700,
    setting off a young collection every few requests that walks every in-flight object,
    although nearly all of them are freed by reference counting.

    Together about 200 µs of CPU per /generate request (bench/generate.py, null
    generator, concurrency 64): more than the rest of the app.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)
