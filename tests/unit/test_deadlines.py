"""worker.cloudflare.client.Deadlines: the whole-call timeout of the HTTP pool.

Real (short) timeouts on the running loop: a block past its deadline raises TimeoutError,
one in time does not, and a cancellation from elsewhere stays a cancellation.
"""

from __future__ import annotations

import asyncio

import pytest

from worker.cloudflare.client import Deadlines


async def test_a_block_past_its_deadline_raises_timeout_error() -> None:
    deadlines = Deadlines(0.2)
    never = asyncio.Event()
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        async with deadlines.apply():
            await never.wait()
    elapsed = asyncio.get_running_loop().time() - started
    assert 0.2 <= elapsed < 5  # at the deadline or a period after (generous: shared CI)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_only_the_slow_calls_time_out() -> None:
    deadlines = Deadlines(0.3)
    release_fast = asyncio.Event()

    async def call(done: asyncio.Event) -> str:
        async with deadlines.apply():
            await done.wait()
        return "answered"

    slow = [asyncio.create_task(call(asyncio.Event())) for _ in range(3)]
    fast = [asyncio.create_task(call(release_fast)) for _ in range(3)]
    release_fast.set()
    results = await asyncio.gather(*fast, *slow, return_exceptions=True)
    assert results[:3] == ["answered"] * 3
    assert all(isinstance(r, TimeoutError) for r in results[3:])


async def test_the_check_stops_when_no_call_is_in_flight() -> None:
    deadlines = Deadlines(0.2)
    async with deadlines.apply():
        await asyncio.sleep(0)
    deadline = asyncio.get_running_loop().time() + 5
    while deadlines.watch._check is not None:
        assert asyncio.get_running_loop().time() < deadline, "the periodic check never stopped"
        await asyncio.sleep(0.01)


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(30)
    entered = asyncio.Event()

    async def call() -> None:
        async with deadlines.apply():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await entered.wait()
    task.cancel()  # e.g. shutdown
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_expired_and_cancelled_from_elsewhere_is_a_cancellation() -> None:
    deadlines = Deadlines(0.05)
    entered = asyncio.Event()

    async def call() -> None:
        async with deadlines.apply():
            entered.set()
            try:
                await asyncio.Event().wait()  # the deadline cancels this...
            finally:
                task.cancel()  # ...and, before the block ends, so does somebody else
                await asyncio.sleep(0)

    task = asyncio.create_task(call())
    await entered.wait()
    with pytest.raises(asyncio.CancelledError):
        await task
