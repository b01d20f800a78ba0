"""A thread-safe LRU cache of style images' Gram matrices, shared across jobs."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import torch

from app.engines.style.options import StyleOptions
from app.engines.style.space import InputSpace
from app.nets.vgg import VGG19Features


class GramCache:
    """Gram matrices of style images, shared across jobs (a popular style is analysed once).

    Keyed by the network, the exact pixels of the resized style image, its input space and
    the layers; least recently used entries go first. Thread-safe.
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[object, ...], dict[str, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(vgg: VGG19Features, style: torch.Tensor, space: InputSpace,
            options: StyleOptions) -> tuple[object, ...]:
        digest = hashlib.sha256(style.contiguous().numpy().tobytes()).hexdigest()
        return (id(vgg), digest, tuple(style.shape), space, tuple(options.style_layers),
                options.precision)

    def get(self, key: tuple[object, ...]) -> dict[str, torch.Tensor] | None:
        with self._lock:
            grams = self._entries.get(key)
            if grams is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return grams

    def put(self, key: tuple[object, ...], grams: dict[str, torch.Tensor]) -> None:
        with self._lock:
            self._entries[key] = grams
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (the network's weights changed: keys hold its id, which a new
        network may reuse)."""
        with self._lock:
            self._entries.clear()
