"""Exactly-once delivery: the transaction gate under concurrent sends and commits.

The fake producer keeps aiokafka's rule that a send outside an open transaction raises
``IllegalOperation``, and yields to the event loop wherever aiokafka does, so the races
between the run loop's commit, the rebalance listener's commit and the sends are real.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import IllegalOperation, KafkaTimeoutError
from aiokafka.structs import TopicPartition

from worker.delivery import ExactlyOnce
from worker.errors import TransactionFailed

TP = TopicPartition("ids", 0)


class FakeTransactionalProducer:
    """Records which transaction each send and offset commit landed in."""

    def __init__(self) -> None:
        self.in_transaction = False
        self.transaction = 0
        self.sent: list[tuple[int, bytes]] = []
        self.committed: list[int] = []
        self.fail_next_send: Exception | None = None

    async def start(self) -> None:
        await asyncio.sleep(0)

    async def stop(self) -> None:
        await asyncio.sleep(0)

    async def begin_transaction(self) -> None:
        await asyncio.sleep(0)  # aiokafka awaits the producer id first
        self.in_transaction = True
        self.transaction += 1

    async def commit_transaction(self) -> None:
        self.in_transaction = False  # committing: no more sends
        await asyncio.sleep(0)
        self.committed.append(self.transaction)

    async def abort_transaction(self) -> None:
        self.in_transaction = False
        await asyncio.sleep(0)

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        if not self.in_transaction:
            raise IllegalOperation("Not in the middle of a transaction")
        await asyncio.sleep(0)

    async def send(self, topic: str, *, value: bytes, key: bytes | None) -> asyncio.Future[None]:
        if not self.in_transaction:
            raise IllegalOperation("Can't send messages while not in transaction")
        if self.fail_next_send is not None:
            exc, self.fail_next_send = self.fail_next_send, None
            raise exc
        self.sent.append((self.transaction, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_soon(done.set_result, None)
        return done


async def test_sends_woken_after_a_commit_never_land_in_the_next_commit() -> None:
    producer = FakeTransactionalProducer()
    delivery = ExactlyOnce(producer, group_id="g")  # type: ignore[arg-type]
    await delivery.start()
    offsets = {TP: (1, "")}

    async def commit_twice() -> None:
        # The run loop and the rebalance listener commit back to back.
        await asyncio.gather(delivery.commit(lambda: offsets), delivery.commit(lambda: offsets))

    for round_ in range(20):
        sends = [
            asyncio.create_task(delivery.send("out", None, f"{round_}-{i}".encode()))
            for i in range(10)
        ]
        await asyncio.gather(commit_twice(), *sends)
    assert len(producer.sent) == 200  # none refused as "not in transaction"
    assert producer.committed == sorted(set(producer.committed))
    assert set(t for t, _ in producer.sent) <= set(producer.committed)
    await delivery.stop()


async def test_a_send_error_fails_the_transaction_and_every_later_step() -> None:
    producer = FakeTransactionalProducer()
    delivery = ExactlyOnce(producer, group_id="g")  # type: ignore[arg-type]
    await delivery.start()
    producer.fail_next_send = KafkaTimeoutError()
    with pytest.raises(TransactionFailed):
        await delivery.send("out", None, b"a")
    with pytest.raises(TransactionFailed):
        await delivery.send("out", None, b"b")
    with pytest.raises(TransactionFailed):
        await delivery.commit(lambda: {TP: (1, "")})
    assert producer.committed == []
    await delivery.stop()
