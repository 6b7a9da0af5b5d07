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
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
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


def build_producer(
    settings: KafkaSettings, *, transactional: bool = False, max_batch_bytes: int | None = None
) -> AIOKafkaProducer:
    """An idempotent producer that waits for every in-sync replica (acks=all).

    ``max_batch_bytes`` (see ``batch_size_for``) overrides ``settings.max_batch_bytes``.

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
        max_batch_size=max_batch_bytes or settings.max_batch_bytes,
        transactional_id=transactional_id,
    )


_BATCH_MARGIN = 1024
"""Bytes kept free under a topic's max.message.bytes for the batch's own header."""


async def batch_size_for(settings: KafkaSettings) -> int:
    """The producer batch size: ``max_batch_bytes``, but under the output and DLQ topics'
    ``max.message.bytes``.

    A batch larger than a topic accepts is refused whole: its events went to the DLQ as
    event_too_large although each was small, and the idempotent producer then stalled
    (found by a tester on a topic with max.message.bytes 20000).
    """
    limits = await max_message_bytes(
        settings.bootstrap_servers, [settings.output_topic, settings.dlq_topic]
    )
    if not limits:
        return settings.max_batch_bytes
    return max(_BATCH_MARGIN, min(settings.max_batch_bytes, min(limits) - _BATCH_MARGIN))


async def max_message_bytes(bootstrap_servers: str, topics: list[str]) -> list[int]:
    """The ``max.message.bytes`` of each topic that reports one."""
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
        for topic in topics
    ]
    async with _admin(bootstrap_servers) as admin:
        responses = await admin.describe_configs(resources)
    return [
        int(entry[1])
        for response in responses
        for resource in response.resources
        if resource[0] == 0  # no error
        for entry in resource[4]
        if entry[0] == "max.message.bytes" and str(entry[1]).isdigit()
    ]


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
