"""The adaptive bound on calls in flight: halves on congestion, grows back on success."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.conftest import FakeClock
from worker.concurrency import AdaptiveLimit


async def test_never_more_holders_than_the_limit() -> None:
    limit = AdaptiveLimit(minimum=1, maximum=3)
    peak = 0
    release = asyncio.Event()

    async def hold() -> None:
        nonlocal peak
        async with limit:
            peak = max(peak, limit.in_use)
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(10)]
    while limit.in_use < 3:
        await asyncio.sleep(0)
    assert sum(t.done() for t in tasks) == 0
    release.set()
    await asyncio.gather(*tasks)
    assert peak == 3
    assert limit.in_use == 0


async def test_struggles_halve_once_per_cooldown_and_successes_grow_back() -> None:
    clock = FakeClock()
    seen: list[int] = []
    limit = AdaptiveLimit(minimum=2, maximum=16, cooldown_s=1.0, clock=clock, on_change=seen.append)
    for _ in range(5):  # one burst of concurrent failures is one signal
        limit.struggled()
    assert limit.limit == 8
    clock.now += 1.0
    limit.struggled()
    clock.now += 1.0
    limit.struggled()
    clock.now += 1.0
    limit.struggled()
    assert limit.limit == 2  # never below the minimum
    for _ in range(2 + 3):  # +1 after `limit` successes each time: 2 -> 3 -> 4
        limit.succeeded()
    assert limit.limit == 4
    assert seen == [16, 8, 4, 2, 3, 4]


async def test_a_cancelled_holder_gives_its_slot_back() -> None:
    limit = AdaptiveLimit(minimum=1, maximum=1)
    entered = asyncio.Event()

    async def hold_forever() -> None:
        async with limit:
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hold_forever())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limit.in_use == 0
    async with limit:  # the slot is free again
        assert limit.in_use == 1


async def test_growth_admits_waiters() -> None:
    limit = AdaptiveLimit(minimum=1, maximum=2, cooldown_s=0)
    limit.struggled()
    assert limit.limit == 1
    gate = asyncio.Event()

    async def hold() -> None:
        async with limit:
            await gate.wait()

    first, second = asyncio.create_task(hold()), asyncio.create_task(hold())
    while limit.in_use < 1:
        await asyncio.sleep(0)
    limit.succeeded()  # 1 success at limit 1: grows to 2
    assert limit.limit == 2
    while limit.in_use < 2:  # the waiter is admitted at once, not when a holder leaves
        await asyncio.sleep(0)
    assert not first.done()
    gate.set()
    await asyncio.gather(first, second)
    assert limit.in_use == 0


async def test_a_cancelled_waiter_takes_no_slot_and_order_is_kept() -> None:
    limit = AdaptiveLimit(minimum=1, maximum=1)
    gate = asyncio.Event()
    order: list[str] = []

    async def hold(name: str) -> None:
        async with limit:
            order.append(name)
            await gate.wait()

    holder = asyncio.create_task(hold("holder"))
    while limit.in_use < 1:
        await asyncio.sleep(0)
    waiters = {name: asyncio.create_task(hold(name)) for name in ("a", "b", "c")}
    for _ in range(3):
        await asyncio.sleep(0)  # all three queue up
    waiters["a"].cancel()
    gate.set()
    await asyncio.gather(holder, waiters["b"], waiters["c"])
    assert waiters["a"].cancelled()
    assert order == ["holder", "b", "c"]
    assert limit.in_use == 0


async def test_a_waiter_cancelled_as_it_gets_a_slot_passes_it_on() -> None:
    limit = AdaptiveLimit(minimum=1, maximum=1)
    gate = asyncio.Event()
    entered: list[str] = []

    async def hold(name: str) -> None:
        async with limit:
            entered.append(name)
            await gate.wait()

    async def hold_then_cancel_the_next() -> None:
        async with limit:
            entered.append("holder")
            await gate.wait()
        # The exit handed the slot to `first`, which has not run yet: cancel it now.
        first.cancel()

    holder = asyncio.create_task(hold_then_cancel_the_next())
    while limit.in_use < 1:
        await asyncio.sleep(0)
    first, second = asyncio.create_task(hold("first")), asyncio.create_task(hold("second"))
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(holder, first, second, return_exceptions=True)
    assert first.cancelled()
    assert entered == ["holder", "second"]
    assert limit.in_use == 0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="minimum"):
        AdaptiveLimit(minimum=3, maximum=2)
