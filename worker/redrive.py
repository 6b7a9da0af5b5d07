"""Re-publish DLQ records to the input topic, e.g. after the cause of a failure was fixed.

Reads the DLQ topic from its beginning up to its end at start (no consumer group, so a
redrive never moves anybody's offsets), keeps the records whose reason and failure time
match the filters, and produces their original key and value, byte for byte, to the input
topic. The pace is that of the rate budget, so a large redrive does not outrun what the
worker may spend on the API.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from worker.budget import Budget
from worker.kafka import partitions_of
from worker.settings import Settings

log = logging.getLogger(__name__)

REDRIVE_HEADER = "enrich-redriven-from"
"""Header on a re-published message: the DLQ topic, partition and offset it came from."""


@dataclass
class RedriveStats:
    """What one redrive did."""

    read: int = 0
    matched: int = 0
    published: int = 0
    unreadable: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    """Every reason read, matched or not (to say which exist when none matched)."""


@dataclass(frozen=True)
class RedriveFilter:
    """Which DLQ records to re-publish (all of them when empty)."""

    reasons: Collection[str] = ()
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: dict[str, object]) -> bool:
        """True if the DLQ record passes every filter."""
        if self.reasons and record.get("reason") not in self.reasons:
            return False
        if self.since is None and self.until is None:
            return True
        failed_at = record.get("failed_at")
        if not isinstance(failed_at, str):
            return False
        when = datetime.fromisoformat(failed_at.replace("Z", "+00:00"))
        return (self.since is None or when >= self.since) and (
            self.until is None or when < self.until
        )


async def redrive(
    settings: Settings,
    selection: RedriveFilter,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Callable[[RedriveStats], None] = lambda stats: None,
) -> RedriveStats:
    """Re-publish the matching DLQ records to the input topic; return the counts."""
    kafka = settings.kafka
    cf = settings.cloudflare
    pace = Budget(calls=cf.effective_budget, window_s=cf.budget_window_s)
    partitions = [
        TopicPartition(kafka.dlq_topic, p)
        for p in await partitions_of(kafka.bootstrap_servers, kafka.dlq_topic)
    ]
    stats = RedriveStats()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False, group_id=None
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers, acks="all", enable_idempotence=True
    )
    await consumer.start()
    await producer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        last_progress = time.monotonic()
        while await _behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue  # written after the redrive started
                    stats.read += 1
                    payload = _parse(record.value)
                    if payload is None:
                        stats.unreadable += 1
                        continue
                    stats.reasons[str(payload.get("reason"))] += 1
                    if not selection.matches(payload) or (
                        limit is not None and stats.matched >= limit
                    ):
                        continue
                    stats.matched += 1
                    if dry_run:
                        continue
                    key, value = _original(payload)
                    if key is None and value is None:
                        stats.unreadable += 1  # Kafka cannot carry a message with neither
                        continue
                    await pace.acquire()
                    origin = f"{tp.topic}/{tp.partition}/{record.offset}".encode()
                    await producer.send_and_wait(
                        kafka.input_topic,
                        key=key,
                        value=value,
                        headers=[(REDRIVE_HEADER, origin)],
                    )
                    stats.published += 1
            if time.monotonic() - last_progress >= 2:
                last_progress = time.monotonic()
                progress(stats)
    finally:
        await producer.stop()
        await consumer.stop()
    return stats


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


def _parse(value: bytes | None) -> dict[str, object] | None:
    try:
        payload = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _original(payload: dict[str, object]) -> tuple[bytes | None, bytes | None]:
    def decode(name: str) -> bytes | None:
        text = payload.get(name)
        if not isinstance(text, str):
            return None
        try:
            return base64.b64decode(text, validate=True)
        except binascii.Error:
            return None

    return decode("original_key_b64"), decode("original_value_b64")
