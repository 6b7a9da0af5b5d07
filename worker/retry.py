"""Retry policy: which failures are tried again, how long to wait, and when to give up.

Backoff is exponential with full jitter, at least the server's retry-after. Auth failures
and 429s are not the message's fault, so they never use up its attempts: the message waits
(holding back its partition's commit) until the account works again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from worker.cloudflare.answers import Answer
from worker.cloudflare.models import Detections
from worker.errors import (
    ApiError,
    ApiUnavailableError,
    AuthError,
    RateLimitedError,
    TransientApiError,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

_JITTER = random.Random()  # noqa: S311 - jitter, not cryptography
"""One generator for every call's backoff jitter: seeding one per call cost ~20 us."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many attempts a message gets and how long to wait between them."""

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 60.0
    max_age_s: float = 900.0

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2 ** (attempt - 1)))
        return max(backoff, retry_after_s or 0.0)


@dataclass(slots=True)
class Attempts:
    """What the DLQ record says about the tries of one message."""

    count: int = 0
    first_s: float | None = None
    """Wall-clock time (epoch seconds) of the first attempt; kept as a number because
    most messages never need it written out (a DLQ record does)."""
    last_s: float | None = None
    last_status: int | None = None
    last_codes: tuple[int, ...] = ()

    def record(self, error: ApiError | None) -> None:
        """Note one attempt and, if it failed, how."""
        now = time.time()
        self.count += 1
        if self.first_s is None:
            self.first_s = now
        self.last_s = now
        self.last_status = 200 if error is None else error.status
        self.last_codes = () if error is None else error.codes

    @property
    def first_at(self) -> str | None:
        """The first attempt's time, RFC 3339 with milliseconds (as DLQ records write it)."""
        return _rfc3339(self.first_s)

    @property
    def last_at(self) -> str | None:
        """The last attempt's time, RFC 3339 with milliseconds."""
        return _rfc3339(self.last_s)


def _rfc3339(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    when = datetime.fromtimestamp(epoch_s, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Outcome:
    """Detections, or the final error and the attempts that led to it."""

    detections: Detections | None = None
    body: bytes | None = None
    """The JSON body the detections were parsed from (what the cache keeps)."""
    error: ApiError | None = None
    attempts: Attempts = field(default_factory=Attempts)


async def fetch_with_retry(
    fetch: Callable[[], Awaitable[Answer]],
    policy: RetryPolicy,
    *,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[str], None] = lambda reason: None,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Call ``fetch`` until it succeeds, fails for good, or runs out of attempts or time.

    Only transient failures count against ``max_attempts``, and only the backoff after them
    against ``max_age_s``; time held by a lockout or refused credentials counts for neither.
    """
    rng = rng or _JITTER
    outcome = Outcome()
    counted = 0
    transient_s = 0.0  # time spent failing and backing off for transient reasons
    while True:
        try:
            outcome.detections, outcome.body = await fetch()
        except ApiError as exc:
            outcome.attempts.record(exc)
            if not exc.retriable:
                outcome.error = exc
                return outcome
            if isinstance(exc, AuthError | ApiUnavailableError):
                # The client holds every call while the credentials are refused or the API
                # is down; this message waits its turn, without using up its attempts.
                on_retry("auth" if isinstance(exc, AuthError) else "api_unavailable")
                await sleep(policy.cap_s)
                continue
            retry_after = exc.retry_after_s if isinstance(exc, TransientApiError) else None
            if isinstance(exc, RateLimitedError):
                on_retry("rate_limited")
                await sleep(policy.delay(1, retry_after, rng))
                continue
            counted += 1
            delay = policy.delay(counted, retry_after, rng)
            if counted >= policy.max_attempts or transient_s + delay > policy.max_age_s:
                outcome.error = exc
                return outcome
            on_retry(_reason(exc))
            started = clock()
            await sleep(delay)
            transient_s += clock() - started
        else:
            outcome.attempts.record(None)
            return outcome


def _reason(exc: ApiError) -> str:
    if exc.status is None:
        return "transport"
    return "http_5xx" if exc.status >= 500 else f"http_{exc.status}"
