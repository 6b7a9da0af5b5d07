"""Kafka clients built from settings, topic creation, and end-offset look-ups.

aiokafka is imported only here and in the pipeline; its exceptions are translated into
ours at those two places.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition

from worker.errors import ConfigError
from worker.settings import KafkaSettings

_TOPIC_ALREADY_EXISTS = 36
_FETCH_MAX_WAIT_MS = 100


def build_consumer(settings: KafkaSettings) -> AIOKafkaConsumer:
    """A group consumer that never commits on its own: the pipeline commits."""
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        client_id=settings.client_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        max_poll_records=settings.max_poll_records,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, settings.session_timeout_ms // 3),
        isolation_level="read_committed",
        # A fetch waits this long at the broker for partitions with nothing new, and a
        # partition resumed meanwhile (backpressure released) waits for that fetch to end:
        # aiokafka's 500 ms default stalled the line by half a second at every release.
        fetch_max_wait_ms=_FETCH_MAX_WAIT_MS,
    )


def build_producer(settings: KafkaSettings, *, transactional: bool = False) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all).

    ``transactional`` gives it a transactional id: ``kafka.transactional_id`` or, when unset,
    ``<group_id>-<hostname>``, stable across restarts of one host, so that a restarted worker
    fences the transaction its predecessor left open.
    """
    transactional_id = None
    if transactional:
        transactional_id = (
            settings.transactional_id or f"{settings.group_id}-{socket.gethostname()}"
        )
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.linger_ms,
        max_batch_size=settings.max_batch_bytes,
        transactional_id=transactional_id,
    )


@asynccontextmanager
async def _admin(bootstrap_servers: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        yield admin
    except KafkaError as exc:
        raise ConfigError(
            f"cannot reach Kafka at {bootstrap_servers} ({type(exc).__name__}): "
            "start it with deploy/local/kafka.sh start or fix ENRICH_KAFKA__BOOTSTRAP_SERVERS"
        ) from None
    finally:
        await admin.close()


async def ensure_topics(
    bootstrap_servers: str, topics: Mapping[str, int], *, replication_factor: int = 1
) -> list[str]:
    """Create the topics that do not exist yet (name -> partitions); return those created."""
    async with _admin(bootstrap_servers) as admin:
        existing = set(await admin.list_topics())
        missing = [name for name in topics if name not in existing]
        if missing:
            response = await admin.create_topics(
                [NewTopic(name, topics[name], replication_factor) for name in missing]
            )
            for error in response.topic_errors:
                name, code = error[0], error[1]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise ConfigError(f"cannot create topic {name}: Kafka error code {code}")
            await _wait_for_leaders(admin, missing)
        return missing


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float = 30.0
) -> None:
    """Wait until every partition of new topics has a leader, so first sends succeed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = await admin.describe_topics(topics)
        if all(
            t["error_code"] == 0
            and t["partitions"]
            and all(p["leader"] >= 0 for p in t["partitions"])
            for t in described
        ):
            return
        await asyncio.sleep(0.05)
    raise ConfigError(
        f"topics {topics} have no leader after {timeout_s:.0f} s; is the broker healthy?"
    )


async def partitions_of(bootstrap_servers: str, topic: str) -> list[int]:
    """The partition numbers of ``topic`` (empty if it does not exist)."""
    async with _admin(bootstrap_servers) as admin:
        described = await admin.describe_topics([topic])
    return sorted(
        p["partition"] for t in described if t["error_code"] == 0 for p in t["partitions"]
    )


async def end_offsets(bootstrap_servers: str, topic: str) -> dict[int, int]:
    """The end offset of every partition of ``topic`` (partition -> offset)."""
    partitions = [TopicPartition(topic, p) for p in await partitions_of(bootstrap_servers, topic)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap_servers: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset of each partition of ``topic`` that has one."""
    async with _admin(bootstrap_servers) as admin:
        offsets = await admin.list_consumer_group_offsets(group_id)
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
