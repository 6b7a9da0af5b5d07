"""The one rate budget every Cloudflare call passes through, and the account lockout.

Cloudflare counts calls per user over a sliding window and blocks every call for five
minutes after one call too many. The budget keeps the send times of the calls in the
current window and lets a call through only while fewer than ``calls`` were sent in the
last ``window_s`` seconds; a 429 blocks every caller until the retry-after has passed.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class Reservation(NamedTuple):
    """One call let through: when, after how long a wait, its place in the order of sends,
    and how many of our calls the server will have counted when it reports on this one
    (those in the window with it, sent since the last block)."""

    sent_at: float
    waited: float
    order: int
    ours_in_window: int


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
        # Calls of other tools of the same user, as the server's Ratelimit figure reveals
        # them; dated when seen, so they are held a whole window at most.
        self._others: deque[float] = deque()
        self._order = 0  # reservations made so far
        self._read_order = -1  # the latest-sent call whose Ratelimit figure was read
        # A lockout may end with the server's count started afresh: calls sent before it
        # are not taken for counted ones (that would hide other tools' calls behind them).
        self._counted_since = -math.inf
        self._blocked_until = 0.0

    @property
    def blocked_for_s(self) -> float:
        """Seconds left in the current lockout, 0 when not blocked."""
        return max(0.0, self._blocked_until - self._clock())

    def remaining(self) -> int:
        """Calls that could be sent right now."""
        self._expire(self._clock())
        return max(0, self.calls - len(self._sent) - len(self._others))

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
            if len(self._sent) + len(self._others) < self.calls:
                self._sent.append(now)
                self._order += 1
                return Reservation(now, now - started, self._order, self._counted())
            oldest = min(q[0] for q in (self._sent, self._others) if q)
            await self._sleep(oldest + self.window_s - now)

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
        self, remaining: int, *, call: Reservation, reserve: int = 0
    ) -> None:
        """Hold back the calls other tools spend, as Cloudflare reports them.

        Other tools of the same user spend the same limit; the server's count (from the
        ``Ratelimit`` header of ``call``'s answer) knows about them, ours does not. The
        server counted ``call`` and, but for a race, the calls we sent before it: what it
        counts beyond those is another tool's. Our calls sent after ``call`` are not in its
        count (taking them for ours let another tool's calls through unseen, as many as
        were in flight), and our calls that left our window since the send still are.

        Each figure replaces the one before, so calls another tool no longer spends are
        freed at once; figures older than one already read are ignored. ``reserve`` calls
        of the limit are left free for the other tools' next calls.
        """
        if call.order <= self._read_order:
            return
        self._read_order = call.order
        now = self._clock()
        self._expire(now)
        counted = self.calls + reserve - remaining
        others = counted - call.ours_in_window
        if others < 0:
            # The server counts fewer of our calls than we sent: its count started afresh
            # (a lockout we did not see) or it let some go sooner than our window does.
            # Other tools' calls cannot be told apart in such a figure: keep what we hold.
            return
        while len(self._others) > others:
            self._others.popleft()
        self._others.extend([now] * (others - len(self._others)))

    def block_for(self, seconds: float) -> None:
        """Hold every call for ``seconds`` (a 429 means the whole account is blocked)."""
        now = self._clock()
        self._blocked_until = max(self._blocked_until, now + seconds)
        self._counted_since = now

    def _counted(self) -> int:
        """Our calls in the window that the server counts (those sent since the last block)."""
        if not self._sent or self._sent[0] > self._counted_since:
            return len(self._sent)
        return len(self._sent) - bisect.bisect_right(self._sent, self._counted_since)

    def _expire(self, now: float) -> None:
        # The same sum as reserve's sleep, so that a call is expired exactly when that
        # sleep ends (``now - window`` can round the other way and wait 1e-15 s forever).
        for queue in (self._sent, self._others):
            while queue and queue[0] + self.window_s <= now:
                queue.popleft()
