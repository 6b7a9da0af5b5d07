"""Fixtures shared by the unit tests: a fake clock with an async sleep, and fresh metrics.

Nothing here opens a socket or really sleeps: time only moves when code under test awaits
the fake ``sleep``, and it moves instantly.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from worker.observability import Metrics


class FakeClock:
    """A monotonic clock for injection: ``clock=fake`` (callable) or ``lambda: fake.now``.

    ``sleep(d)`` records ``d``, moves ``now`` forward by ``d`` at once and yields to the event
    loop, so concurrent coroutines interleave; time never goes back, so every sleeper wakes
    at least ``d`` after it went to sleep.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"negative sleep {seconds}"
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)
