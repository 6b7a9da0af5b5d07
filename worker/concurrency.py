"""An adaptive bound on API calls in flight (AIMD), between a minimum and a maximum.

Failures that mean "the server or the path is struggling" (timeouts, 5xx, resets, 429)
halve the limit, at most once per cool-down so one burst of concurrent failures counts as
one signal; every ``limit`` successes raise it by one. Slots are released in ``finally``,
so a cancelled call never keeps one.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType


class AdaptiveLimit:
    """An async context manager that admits at most ``limit`` holders at once.

    Waiters queue in order; a freed slot is handed to the first of them directly (no lock,
    no re-check: with thousands of messages queueing for a few slots, that is every call).
    """

    def __init__(
        self,
        *,
        minimum: int,
        maximum: int,
        cooldown_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[int], None] = lambda limit: None,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.minimum, self.maximum = minimum, maximum
        self.limit = maximum
        self.in_use = 0
        self._successes = 0
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._last_decrease = -cooldown_s
        self._on_change = on_change
        self._waiters: deque[asyncio.Future[None]] = deque()
        on_change(self.limit)

    async def __aenter__(self) -> None:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # done when a slot was handed over (and counted in in_use)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # handed a slot just as this task was cancelled: pass it on
            raise  # a cancelled waiter left in the queue is skipped by _admit

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        self.in_use -= 1
        self._admit()

    def _admit(self) -> None:
        """Hand free slots to the waiters, first come first served."""
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)

    def succeeded(self) -> None:
        """One call went well: grow by one after ``limit`` of them."""
        self._successes += 1
        if self._successes >= self.limit and self.limit < self.maximum:
            self._successes = 0
            self._set(self.limit + 1)

    def struggled(self) -> None:
        """One call showed congestion: halve, unless we just did."""
        now = self._clock()
        if now - self._last_decrease < self._cooldown_s:
            return
        self._last_decrease = now
        self._successes = 0
        self._set(max(self.minimum, self.limit // 2))

    def _set(self, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            self._on_change(limit)
            self._admit()  # the limit may have grown
