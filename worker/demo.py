"""The demo: simulator + local broker + worker on 1,000 sample ids, then a summary.

Each run uses topics and a consumer group of its own (suffixed with the start time), so
the counts it prints are about this run only and the demo can be repeated.
"""

from __future__ import annotations

import asyncio
import time
from typing import TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from worker.httpserver import bound_port, serve
from worker.kafka import committed_offsets, end_offsets, ensure_topics
from worker.service import run_worker
from worker.settings import Settings
from worker.simulator import API_PREFIX, DEFAULT_TOKEN, Simulator, SimulatorConfig, catalog_id

DEMO_PARTITIONS = 3


async def run_demo(settings: Settings, *, count: int, out: TextIO) -> int:
    """Run the whole line once on ``count`` ids; return the process exit code."""
    simulator = Simulator(SimulatorConfig(seed=7))
    server = await serve(simulator, host="127.0.0.1", port=0)
    suffix = time.strftime("%Y%m%d-%H%M%S")
    kafka = settings.kafka.model_copy(
        update={
            "input_topic": f"demo-{suffix}-ids",
            "output_topic": f"demo-{suffix}-events",
            "dlq_topic": f"demo-{suffix}-dlq",
            "group_id": f"demo-{suffix}",
        }
    )
    cloudflare = settings.cloudflare.model_copy(
        update={
            "base_url": f"http://127.0.0.1:{bound_port(server)}{API_PREFIX}",
            "api_token": settings.cloudflare.api_token or SecretStr(DEFAULT_TOKEN),
            "account_id": settings.cloudflare.account_id or "023e105f4ecef8ad9ca31a8372d0c353",
        }
    )
    demo_settings = settings.model_copy(update={"kafka": kafka, "cloudflare": cloudflare})
    try:
        await ensure_topics(
            kafka.bootstrap_servers,
            {
                kafka.input_topic: DEMO_PARTITIONS,
                kafka.output_topic: DEMO_PARTITIONS,
                kafka.dlq_topic: 1,
            },
        )
        await _feed(kafka.bootstrap_servers, kafka.input_topic, count)
        out.write(
            f"demo: fed {count} ids to {kafka.input_topic}; simulator on {cloudflare.base_url}\n"
        )
        budget, window_s = cloudflare.effective_budget, cloudflare.budget_window_s
        if count > budget:
            minutes = (-(-count // budget) - 1) * window_s / 60
            out.write(
                f"demo: the rate budget allows {budget} calls per {window_s:.0f} s, as "
                f"Cloudflare would, so this takes about {minutes:.0f} min; the simulator has "
                "no limit, so ENRICH_CLOUDFLARE__BUDGET_CALLS may be raised for a faster demo\n"
            )
        if settings.metrics.enabled:
            out.write(
                f"demo: metrics at http://{settings.metrics.host}:{settings.metrics.port}/metrics "
                "while the worker runs\n"
            )
        out.flush()
        started = time.monotonic()
        stats = await run_worker(demo_settings, burst=True, registry=CollectorRegistry())
        elapsed = time.monotonic() - started
    finally:
        server.close()
        await server.wait_closed()

    ends = await end_offsets(kafka.bootstrap_servers, kafka.input_topic)
    committed = await committed_offsets(kafka.bootstrap_servers, kafka.group_id, kafka.input_topic)
    events_out = sum((await end_offsets(kafka.bootstrap_servers, kafka.output_topic)).values())
    sample = await _first_event(kafka.bootstrap_servers, kafka.output_topic)
    out.write(
        f"demo: {count} ids in, {events_out} events out, {stats.dlq} to the DLQ "
        f"in {elapsed:.1f} s ({simulator.stats()['requests_total']} API calls)\n"
    )
    caught_up = committed == ends
    out.write(
        f"demo: committed offsets {'equal' if caught_up else 'DO NOT equal'} the input's end "
        f"offsets {dict(sorted(ends.items()))}\n"
    )
    if sample is not None:
        out.write("demo: one event:\n")
        out.write(orjson.dumps(orjson.loads(sample), option=orjson.OPT_INDENT_2).decode() + "\n")
    out.write(
        f"demo: read them with any Kafka client, e.g. "
        f"kcat -C -b {kafka.bootstrap_servers} -t {kafka.output_topic} -e\n"
        "demo: the broker keeps running; stop it with deploy/local/kafka.sh stop\n"
    )
    out.flush()
    return 0 if caught_up and events_out == count and stats.dlq == 0 else 1


async def _feed(bootstrap_servers: str, topic: str, count: int) -> None:
    """Produce ``count`` simulator ids, half bare and half in the JSON form with context."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    await producer.start()
    try:
        deliveries = []
        for i in range(count):
            investigate_id = catalog_id(7, i)
            if i % 2:
                value = orjson.dumps(
                    {"investigate_id": investigate_id, "context": {"alert_id": f"ALERT-{i}"}}
                )
            else:
                value = investigate_id.encode()
            deliveries.append(await producer.send(topic, value=value, key=investigate_id.encode()))
        await asyncio.gather(*deliveries)
    finally:
        await producer.stop()


async def _first_event(bootstrap_servers: str, topic: str) -> bytes | None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000, max_records=1)
        for records in batch.values():
            for record in records:
                value: bytes = record.value
                return value
        return None
    finally:
        await consumer.stop()
