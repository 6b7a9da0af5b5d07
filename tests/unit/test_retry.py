"""worker.retry: fetch_with_retry and RetryPolicy.delay, with a fake sleep and seeded jitter.

Transient failures are retried up to max_attempts; permanent ones return at once; 429s and
auth failures never use up a message's attempts (the message waits for the account); every
wait is full jitter under min(cap, base * 2**(n-1)) and at least the server's retry-after.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable

import pytest

from tests.unit.conftest import FakeClock
from worker.cloudflare.answers import Answer
from worker.cloudflare.models import Detections
from worker.errors import (
    ApiError,
    ApiRejectedError,
    AuthError,
    InvalidResponseError,
    NotFoundError,
    RateLimitedError,
    TransientApiError,
)
from worker.retry import Outcome, RetryPolicy, fetch_with_retry

DETECTIONS = Detections(action="QUARANTINED")
POLICY = RetryPolicy(max_attempts=4, base_s=0.5, cap_s=8.0)


class Script:
    """A fetch that raises the scripted errors in order, then returns DETECTIONS."""

    def __init__(self, errors: Iterable[ApiError]) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> Answer:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Answer(DETECTIONS, b"{}")


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def transient(status: int | None = 503, retry_after: float | None = None) -> TransientApiError:
    return TransientApiError(f"HTTP {status}", status=status, codes=(), retry_after_s=retry_after)


def rate_limited(retry_after: float = 30.0) -> RateLimitedError:
    return RateLimitedError("HTTP 429", status=429, codes=(971,), retry_after_s=retry_after)


def auth() -> AuthError:
    return AuthError("HTTP 403", status=403, codes=(10000,))


async def run(
    fetch: Callable[[], Awaitable[Answer]],
    policy: RetryPolicy = POLICY,
    seed: int = 1,
) -> tuple[Outcome, Sleeps, list[str]]:
    sleeps = Sleeps()
    reasons: list[str] = []
    outcome = await fetch_with_retry(
        fetch, policy, sleep=sleeps, rng=random.Random(seed), on_retry=reasons.append
    )
    return outcome, sleeps, reasons


async def test_first_try_success() -> None:
    outcome, sleeps, reasons = await run(Script([]))
    assert outcome.detections is DETECTIONS
    assert outcome.error is None
    assert outcome.attempts.count == 1
    assert outcome.attempts.last_status == 200
    assert sleeps.delays == []
    assert reasons == []


async def test_success_after_transient_failures() -> None:
    script = Script([transient(503), transient(None), transient(408)])
    outcome, sleeps, reasons = await run(script)
    assert outcome.detections is DETECTIONS
    assert outcome.error is None
    assert script.calls == 4
    assert outcome.attempts.count == 4
    assert outcome.attempts.last_status == 200
    assert outcome.attempts.last_codes == ()
    assert reasons == ["http_5xx", "transport", "http_408"]
    assert len(sleeps.delays) == 3
    for n, delay in enumerate(sleeps.delays, start=1):
        assert 0 <= delay <= min(POLICY.cap_s, POLICY.base_s * 2 ** (n - 1))


async def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    errors = [transient(500 + i) for i in range(10)]
    script = Script(errors)
    outcome, sleeps, _ = await run(script)
    assert outcome.detections is None
    assert outcome.error is not None
    assert outcome.error.status == 500 + POLICY.max_attempts - 1
    assert script.calls == POLICY.max_attempts
    assert outcome.attempts.count == POLICY.max_attempts
    assert outcome.attempts.last_status == 500 + POLICY.max_attempts - 1
    assert outcome.attempts.first_at is not None
    assert outcome.attempts.last_at is not None
    assert outcome.attempts.first_at <= outcome.attempts.last_at
    assert len(sleeps.delays) == POLICY.max_attempts - 1  # no wait after the last attempt


async def test_max_attempts_one_means_no_retry() -> None:
    script = Script([transient(), transient()])
    outcome, sleeps, _ = await run(script, RetryPolicy(max_attempts=1))
    assert outcome.error is not None
    assert script.calls == 1
    assert sleeps.delays == []


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("HTTP 404", status=404, codes=(7003,)),
        ApiRejectedError("HTTP 400", status=400, codes=(1234,)),
        InvalidResponseError("bad shape", status=200),
    ],
)
async def test_non_retriable_error_returns_immediately(error: ApiError) -> None:
    script = Script([error, transient()])
    outcome, sleeps, reasons = await run(script)
    assert outcome.error is error
    assert outcome.detections is None
    assert outcome.attempts.count == 1
    assert outcome.attempts.last_status == error.status
    assert outcome.attempts.last_codes == error.codes
    assert script.calls == 1
    assert sleeps.delays == []
    assert reasons == []


async def test_rate_limited_does_not_use_up_attempts_and_waits_retry_after() -> None:
    script = Script([rate_limited(30.0) for _ in range(10)])
    outcome, sleeps, reasons = await run(script, RetryPolicy(max_attempts=2))
    assert outcome.detections is DETECTIONS
    assert outcome.attempts.count == 11
    assert reasons == ["rate_limited"] * 10
    assert len(sleeps.delays) == 10
    assert all(delay >= 30.0 for delay in sleeps.delays)


async def test_rate_limits_between_transient_failures_are_not_counted() -> None:
    errors = [rate_limited(), transient(502), rate_limited(), rate_limited(), transient(503)]
    script = Script([*errors, transient(504)])
    outcome, sleeps, reasons = await run(script, RetryPolicy(max_attempts=2))
    assert outcome.error is errors[-1]  # the second transient failure used the last attempt
    assert outcome.attempts.count == 5
    assert reasons == ["rate_limited", "http_5xx", "rate_limited", "rate_limited"]
    assert [d >= 30 for d in sleeps.delays] == [True, False, True, True]


async def test_transient_retry_after_is_respected() -> None:
    outcome, sleeps, _ = await run(Script([transient(503, retry_after=45.0)]))
    assert outcome.detections is DETECTIONS
    assert sleeps.delays == [45.0]


async def test_auth_error_keeps_retrying_and_never_returns_an_error() -> None:
    n = 25  # far more than max_attempts: auth failures are not the message's fault
    script = Script([auth() for _ in range(n)])
    outcome, sleeps, reasons = await run(script, RetryPolicy(max_attempts=2, cap_s=60.0))
    assert outcome.error is None
    assert outcome.detections is DETECTIONS
    assert script.calls == n + 1
    assert outcome.attempts.count == n + 1
    assert reasons == ["auth"] * n
    assert sleeps.delays == [60.0] * n


async def test_auth_failures_do_not_use_up_attempts_of_transient_errors() -> None:
    script = Script([transient(), auth(), auth(), auth()])
    outcome, _, _ = await run(script, RetryPolicy(max_attempts=2))
    assert outcome.detections is DETECTIONS


async def test_non_api_exception_propagates() -> None:
    async def broken() -> Answer:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        await run(broken)


# --- RetryPolicy.delay ---------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 8, 30])
def test_delay_is_full_jitter_under_the_capped_exponential(attempt: int) -> None:
    policy = RetryPolicy(base_s=0.5, cap_s=8.0)
    bound = min(8.0, 0.5 * 2 ** (attempt - 1))
    rng = random.Random(attempt)
    delays = [policy.delay(attempt, None, rng) for _ in range(2000)]
    assert all(0 <= d <= bound for d in delays)
    # Full jitter: the whole range is used, not a fixed or narrowly jittered value.
    assert min(delays) < 0.05 * bound
    assert max(delays) > 0.95 * bound


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    a = [POLICY.delay(n, None, random.Random(3)) for n in range(1, 6)]
    b = [POLICY.delay(n, None, random.Random(3)) for n in range(1, 6)]
    assert a == b


@pytest.mark.parametrize("retry_after", [0.0, 0.1, 3.0, 100.0])
def test_delay_is_at_least_retry_after(retry_after: float) -> None:
    rng = random.Random(5)
    for attempt in range(1, 10):
        delay = POLICY.delay(attempt, retry_after, rng)
        assert delay >= retry_after
        assert delay <= max(retry_after, min(POLICY.cap_s, POLICY.base_s * 2 ** (attempt - 1)))


def test_retry_after_above_the_cap_wins() -> None:
    assert POLICY.delay(1, 300.0, random.Random(0)) == 300.0


async def test_gives_up_when_the_backoff_would_pass_the_max_age() -> None:
    clock = FakeClock()
    script = Script([transient() for _ in range(10)])
    policy = RetryPolicy(max_attempts=100, base_s=10.0, cap_s=10.0, max_age_s=25.0)
    outcome = await fetch_with_retry(
        script, policy, sleep=clock.sleep, rng=random.Random(1), clock=clock
    )
    assert outcome.error is not None
    assert outcome.error.reason == "retries_exhausted"
    assert sum(clock.sleeps) <= 25.0  # never slept past the age
    assert 2 <= outcome.attempts.count < 10
