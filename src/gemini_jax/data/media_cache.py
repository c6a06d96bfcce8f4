"""Preprocessed media of files, kept by path within a byte budget."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import numpy as np


class MediaCache:
    """Preprocessed media of files, by path, least recently used first out, within a byte budget.

    Demo tasks show the same few thousand files for many epochs; decoding and resizing
    them again each time would cost more than the training step on a laptop. Arrays
    given in memory are not cached (they have no stable key). Thread-safe: grain's
    prefetch threads share one cache.
    """

    def __init__(self, *, max_bytes: int = 512 << 20):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
        value = make()
        size = sum(a.nbytes for a in _arrays(value))
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = value
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= sum(a.nbytes for a in _arrays(old))
        return value

    def __getstate__(self) -> dict:  # a copy sent to a worker process starts empty
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(max_bytes=state["max_bytes"])


def _arrays(value: Any) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, (tuple, list)):
        return [a for v in value for a in _arrays(v)]
    return []
