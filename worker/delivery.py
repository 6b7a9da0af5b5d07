"""How outputs and input offsets reach Kafka: at least once (default) or exactly once.

At least once: every send is awaited until the broker acknowledged it, and offsets are
committed through the consumer group afterwards; a crash repeats the uncommitted window.

Exactly once (``pipeline.exactly_once``): outputs are written inside a Kafka transaction
and the input offsets are committed in the same transaction, so a ``read_committed``
reader sees each message's output once. Sends run concurrently inside the open
transaction; a commit closes the gate, waits for the sends in flight, adds the offsets,
commits and opens the next transaction. If a transaction cannot be committed, the outputs
it held are aborted and the worker stops (exit 1), so that it restarts from the last
committed transaction instead of continuing with offsets it no longer owns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from worker.errors import TransactionFailed

log = logging.getLogger(__name__)

Offsets = Mapping[TopicPartition, tuple[int, str]]


class AtLeastOnce:
    """Acknowledged sends, then consumer-group commits."""

    def __init__(self, producer: AIOKafkaProducer, consumer: AIOKafkaConsumer) -> None:
        self._producer = producer
        self._consumer = consumer

    async def start(self) -> None:
        """Connect the producer."""
        await self._producer.start()

    async def stop(self) -> None:
        """Flush and close the producer."""
        await self._producer.stop()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send one record and wait for the broker's acknowledgement."""
        delivery = await self._producer.send(topic, value=value, key=key)
        await delivery

    async def commit(self, collect: Callable[[], Offsets]) -> Offsets:
        """Commit the input offsets (with metadata) that ``collect`` returns; return them."""
        offsets = collect()
        if offsets:
            await self._consumer.commit(dict(offsets))
        return offsets


class ExactlyOnce:
    """Transactional sends; offsets committed inside the same transaction."""

    def __init__(self, producer: AIOKafkaProducer, *, group_id: str) -> None:
        self._producer = producer
        self._group_id = group_id
        self._open = asyncio.Event()  # set while sends may enter the transaction
        self._sending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed = False
        self._in_transaction = False
        # The main loop and the rebalance listener both commit: one transaction at a time.
        self._committing = asyncio.Lock()

    async def start(self) -> None:
        """Connect (fencing any earlier producer with the same transactional id) and begin."""
        await self._producer.start()
        await self._producer.begin_transaction()
        self._in_transaction = True
        self._open.set()

    async def stop(self) -> None:
        """Abort whatever is not committed, then close."""
        self._open.clear()
        try:
            if self._in_transaction:
                self._in_transaction = False
                await self._producer.abort_transaction()
        except KafkaError as exc:
            log.warning("abort on stop failed", extra={"error": repr(exc)})
        finally:
            await self._producer.stop()

    async def send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Send one record inside the open transaction and wait for its acknowledgement."""
        # A waiter woken by set() runs later; by then the next commit may have closed the
        # gate again, so look again before entering.
        while not self._open.is_set():
            await self._open.wait()
        if self._failed:
            raise TransactionFailed("the transaction failed; the worker is stopping")
        self._sending += 1
        self._idle.clear()
        try:
            delivery = await self._producer.send(topic, value=value, key=key)
            await delivery
        except KafkaError as exc:
            # Inside a transaction any send error leaves it abortable only: its outputs
            # will not become visible, so none of its messages may count as done.
            self._failed = True
            raise TransactionFailed(f"send failed inside the transaction: {exc!r}") from exc
        finally:
            self._sending -= 1
            if not self._sending:
                self._idle.set()

    async def commit(self, collect: Callable[[], Offsets]) -> Offsets:
        """Commit the transaction with the offsets ``collect`` returns, then open the next.

        The offsets are collected only once no send is in flight, so that every output in
        the transaction has its offset (or its place in the metadata) in the same commit.
        """
        async with self._committing:
            return await self._commit(collect)

    async def _commit(self, collect: Callable[[], Offsets]) -> Offsets:
        if self._failed:
            raise TransactionFailed("the transaction failed; the worker is stopping")
        self._open.clear()
        try:
            await self._idle.wait()
            offsets = collect()
            if offsets:
                await self._producer.send_offsets_to_transaction(dict(offsets), self._group_id)
            await self._producer.commit_transaction()
            self._in_transaction = False
            await self._producer.begin_transaction()
            self._in_transaction = True
            return offsets
        except KafkaError as exc:
            self._failed = True
            raise TransactionFailed(f"transaction failed: {exc!r}") from exc
        finally:
            self._open.set()
