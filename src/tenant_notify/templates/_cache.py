"""A bounded, thread-safe LRU mapping that counts its hits and misses."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one cache.

    Attributes:
        hits: Lookups that found an entry, since the cache was made.
        misses: Lookups that did not.
        size: Entries held now.
        max_size: Entries it holds at most (the least recently used go first).
    """

    hits: int
    misses: int
    size: int
    max_size: int

    @property
    def hit_rate(self) -> float:
        """Hits per lookup, 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class LRUCache(Generic[K, V]):
    """At most ``max_size`` entries; the least recently used one goes first.

    Also serves as Jinja's template cache (``Environment.cache``), which only
    calls :meth:`get`, ``cache[key] = value`` and :meth:`clear`. Reads take no
    lock (each ``OrderedDict`` operation is atomic under the GIL); the counters
    may miss an increment when two threads race, which a hit rate can bear.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...
    def get(self, key: K, default: D | None = None) -> V | D | None:
        try:
            value = self._data[key]
        except KeyError:
            self.misses += 1
            return default
        self.hits += 1
        # try/except is cheaper than contextlib.suppress here, on every lookup.
        try:  # noqa: SIM105
            self._data.move_to_end(key)
        except KeyError:
            pass  # another thread evicted it meanwhile
        return value

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.max_size:
                self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, len(self._data), self.max_size)
