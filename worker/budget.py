"""The one rate budget every Cloudflare call passes through, and the account lockout.

Cloudflare counts calls per user over a sliding window and blocks every call for five
minutes after one call too many. The budget keeps the send times of the calls in the
current window and lets a call through only while fewer than ``calls`` were sent in the
last ``window_s`` seconds; a 429 blocks every caller until the retry-after has passed.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Reservation(NamedTuple):
    """One call let through: when, after how long a wait, and how many calls had left the
    window by then (to read a later ``Ratelimit`` header against the window of that time)."""

    sent_at: float
    waited: float
    expired_before: int


class Budget:
    """A sliding-window call budget shared by all requests of the process."""

    def __init__(
        self,
        *,
        calls: int,
        window_s: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if calls < 1 or window_s <= 0:
            raise ValueError("a budget needs calls >= 1 and window_s > 0")
        self.calls = calls
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._expired = 0  # calls that have left the window since the start
        self._blocked_until = 0.0

    @property
    def blocked_for_s(self) -> float:
        """Seconds left in the current lockout, 0 when not blocked."""
        return max(0.0, self._blocked_until - self._clock())

    def remaining(self) -> int:
        """Calls that could be sent right now."""
        self._expire(self._clock())
        return self.calls - len(self._sent)

    async def acquire(self) -> float:
        """Wait until a call may be sent, count it, and return the seconds waited."""
        return (await self.reserve()).waited

    async def reserve(self) -> Reservation:
        """Wait until a call may be sent and count it.

        Pass the reservation to ``settle`` once the answer arrived.
        """
        started = self._clock()
        while True:
            now = self._clock()
            if now < self._blocked_until:
                await self._sleep(self._blocked_until - now)
                continue
            self._expire(now)
            if len(self._sent) < self.calls:
                self._sent.append(now)
                return Reservation(now, now - started, self._expired)
            await self._sleep(self._sent[0] + self.window_s - now)

    def settle(self, call: Reservation) -> None:
        """Count a finished call from when its answer arrived, not from when it was sent.

        The server counted the call somewhere in between; dating it at the answer makes
        our window release it no earlier than the server's, whatever the latency.
        """
        index = bisect.bisect_left(self._sent, call.sent_at)
        if index < len(self._sent) and self._sent[index] == call.sent_at:
            del self._sent[index]
            now = self._clock()
            self._sent.insert(bisect.bisect_right(self._sent, now), now)

    def observe_server_remaining(
        self, remaining: int, reset_s: float, *, call: Reservation, reserve: int = 0
    ) -> None:
        """Tighten the budget when Cloudflare reports fewer calls left than we expect.

        Other tools of the same user spend the same limit; the server's count (from the
        ``Ratelimit`` header of ``call``'s answer) knows about them, ours does not.
        ``reserve`` calls are left for them. Placeholder send times make our window see
        the missing calls, expiring when the server's window resets.

        The server counted when it answered, after ``call`` was sent: our calls that left
        our window since then were still in the count it reports, so they are ours, not
        another tool's (forgetting them made every answer near the window's edge hold
        back as many calls as had just expired, for up to a second: 1 % of the budget).
        """
        now = self._clock()
        self._expire(now)
        allowed = max(0, remaining - reserve)
        ours_when_sent = len(self._sent) + self._expired - call.expired_before
        missing = self.calls - ours_when_sent - allowed
        if missing <= 0:
            return
        stamp = now + min(max(reset_s, 0.0), self.window_s) - self.window_s
        index = bisect.bisect_right(self._sent, stamp)
        for _ in range(missing):
            self._sent.insert(index, stamp)

    def block_for(self, seconds: float) -> None:
        """Hold every call for ``seconds`` (a 429 means the whole account is blocked)."""
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    def _expire(self, now: float) -> None:
        # The same sum as reserve's sleep, so that a call is expired exactly when that
        # sleep ends (``now - window`` can round the other way and wait 1e-15 s forever).
        while self._sent and self._sent[0] + self.window_s <= now:
            self._sent.popleft()
            self._expired += 1
