"""A small TTL + LRU cache, so repeated ids do not spend the Cloudflare budget again."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Keeps each value ``ttl_s`` seconds (0 disables it), within two bounds.

    At most ``max_entries`` values and, when ``max_bytes`` is given, at most that many bytes
    as ``weigh`` counts them; the least recently used go first.
    """

    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        max_bytes: int | None = None,
        weigh: Callable[[V], int] = lambda value: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._max_bytes = max_bytes
        self._weigh = weigh
        self._clock = clock
        self._items: OrderedDict[K, tuple[float, V, int]] = OrderedDict()
        self.bytes = 0
        """What the values weigh in all."""

    @property
    def enabled(self) -> bool:
        """False when the TTL or either size is 0."""
        return self._ttl_s > 0 and self._max > 0 and self._max_bytes != 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        """The value if present and fresh, else None."""
        item = self._items.get(key)
        if item is None:
            return None
        expires, value, _ = item
        if expires <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """Store ``value``; the least recently used entries go while a bound is passed."""
        if not self.enabled:
            return
        if key in self._items:
            self._drop(key)
        weight = self._weigh(value)
        if self._max_bytes is not None and weight > self._max_bytes:
            return  # larger than the whole cache: not kept
        self._items[key] = (self._clock() + self._ttl_s, value, weight)
        self.bytes += weight
        while len(self._items) > self._max or (
            self._max_bytes is not None and self.bytes > self._max_bytes
        ):
            _, (_, _, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped

    def _drop(self, key: K) -> None:
        _, _, weight = self._items.pop(key)
        self.bytes -= weight
