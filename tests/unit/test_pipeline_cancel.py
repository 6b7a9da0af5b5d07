"""Pipeline._cancel: on rebalance and shutdown, work still enriching is cancelled, while a
task already sending its output is let finish (its offset must be marked done: in
exactly-once mode the output is in the open transaction), up to a bounded wait."""

from __future__ import annotations

import asyncio

import pytest

import worker.pipeline as pipeline_module
from worker.pipeline import Pipeline


def bare_pipeline() -> Pipeline:
    pipeline = Pipeline.__new__(Pipeline)  # _cancel needs only the set of delivering tasks
    pipeline._delivering = set()
    return pipeline


async def test_enriching_tasks_are_cancelled_and_delivering_ones_finish() -> None:
    pipeline = bare_pipeline()
    sent = asyncio.Event()
    finished: list[str] = []

    async def enriching() -> None:
        await asyncio.Event().wait()  # e.g. queued behind the rate budget

    async def delivering() -> None:
        pipeline._delivering.add(asyncio.current_task())  # type: ignore[arg-type]
        await sent.wait()  # the broker's acknowledgement
        finished.append("delivered")

    slow, sending = asyncio.create_task(enriching()), asyncio.create_task(delivering())
    await asyncio.sleep(0)
    cancelling = asyncio.create_task(pipeline._cancel([slow, sending]))
    deadline = asyncio.get_running_loop().time() + 5
    while not slow.done():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0)
    assert slow.cancelled()
    assert not sending.done()  # still waiting for its acknowledgement, not cancelled
    sent.set()
    await cancelling
    assert finished == ["delivered"]
    assert not sending.cancelled()


async def test_a_send_that_never_ends_is_abandoned_after_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline_module, "_DELIVERY_WAIT_S", 0.05)
    pipeline = bare_pipeline()

    async def stuck_send() -> None:
        pipeline._delivering.add(asyncio.current_task())  # type: ignore[arg-type]
        await asyncio.Event().wait()  # the broker never answers

    task = asyncio.create_task(stuck_send())
    await asyncio.sleep(0)
    await pipeline._cancel([task])
    assert task.cancelled()
