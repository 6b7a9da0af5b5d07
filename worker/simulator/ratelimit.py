"""Cloudflare's API rate limit as the simulator enforces it: a sliding budget and a lockout.

At most ``limit`` calls in any ``window_s`` seconds. The call that would exceed it is
refused and starts a block of ``lockout_s`` seconds during which *every* call is refused
with 429; calls refused during the block neither count nor extend it. When the block
ends the budget is full again.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the limiter says about one call, and the headers that describe it."""

    allowed: bool
    headers: tuple[tuple[str, str], ...]
    started_lockout: bool = False


class RateLimiter:
    """Counts calls on an injected monotonic clock; ``limit=0`` lets everything through."""

    def __init__(
        self,
        *,
        limit: int,
        window_s: float,
        lockout_s: float,
        clock: Callable[[], float],
        headers: bool = True,
    ) -> None:
        self._clock = clock
        self._sent: deque[float] = deque()
        self._blocked_until = -math.inf
        self.reconfigure(limit=limit, window_s=window_s, lockout_s=lockout_s, headers=headers)

    def reconfigure(self, *, limit: int, window_s: float, lockout_s: float, headers: bool) -> None:
        """Change the limits; calls already counted and a running block are kept."""
        self.limit = limit
        self.window_s = window_s
        self.lockout_s = lockout_s
        self._headers = headers
        self._policy = ("ratelimit-policy", f'"burst";q={limit};w={math.ceil(window_s)}')

    def reset(self) -> None:
        """Forget every counted call and any block."""
        self._sent.clear()
        self._blocked_until = -math.inf

    def block(self) -> None:
        """Start a lockout now, as if another client of the same user went over the limit."""
        self._blocked_until = self._clock() + self.lockout_s
        self._sent.clear()

    @property
    def blocked_until(self) -> float:
        """Clock time at which the current block ends (-inf when there is none)."""
        return self._blocked_until

    def check(self) -> Verdict:
        """Count one call (if allowed) and say whether it may proceed."""
        if self.limit <= 0:
            return _FREE
        now = self._clock()
        if now < self._blocked_until:
            return self._refused(self._blocked_until - now, started=False)
        sent = self._sent
        horizon = now - self.window_s
        while sent and sent[0] <= horizon:
            sent.popleft()
        if len(sent) >= self.limit:
            self._blocked_until = now + self.lockout_s
            sent.clear()
            return self._refused(self.lockout_s, started=True)
        sent.append(now)
        if not self._headers:
            return _FREE
        # t: seconds until the oldest counted call leaves the window, i.e. until r grows.
        reset_s = math.ceil(sent[0] + self.window_s - now)
        remaining = self.limit - len(sent)
        return Verdict(True, (("ratelimit", f'"default";r={remaining};t={reset_s}'), self._policy))

    def _refused(self, wait_s: float, *, started: bool) -> Verdict:
        seconds = max(1, math.ceil(wait_s))
        headers: tuple[tuple[str, str], ...] = (("retry-after", str(seconds)),)
        if self._headers:
            headers += (("ratelimit", f'"default";r=0;t={seconds}'), self._policy)
        return Verdict(False, headers, started_lockout=started)


_FREE = Verdict(True, ())
