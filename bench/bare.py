"""The stack's own limits: a bare httpx GET loop and a bare aiokafka consume->produce loop.

Each does the one thing with the same concurrency and client settings the worker uses and
nothing else, so the worker's throughput divided by the slower of the two says how much of
what the stack can do the worker turns into enrichments (``bench/run.py``, measure 2).

``http``: ``--concurrency`` tasks (the worker's ``cloudflare.max_in_flight``, 16) share
httpx clients laid out as the worker's (``--pool-size`` connections each, 4, so 4 clients;
each GET goes to the client with the most free connections) with the worker's timeouts;
each GETs the detections URL of the next id and reads the whole body. No parsing, no budget,
no retries. ``--pool-size 16`` gives httpx's plain layout, one client for all (slower:
bench/README.md). ``--transport httpx`` (default) is httpx as shipped, on anyio sockets;
``--transport asyncio`` is the worker's AsyncioTransport (worker/cloudflare/transport.py).

``kafka``: one group consumer (``read_committed``, ``max_poll_records`` 500, no auto
commit) and one idempotent ``acks=all`` producer with ``linger_ms`` 5 and the worker's
batch size, as the worker builds them; every record read is produced to the output topic
(its value padded to ``--value-bytes``, the size of the worker's events), at most
``--max-pending`` (the worker's ``pipeline.max_pending_messages``, 2,000) unacknowledged;
offsets whose output was acknowledged are committed every ``--commit-interval-s``. No
parsing, no HTTP.

Both print one JSON line: count, seconds from the first to the last item, rate, CPU.

    .venv/bin/python bench/bare.py http --base-url http://127.0.0.1:PORT/client/v4 --count 100000
    .venv/bin/python bench/bare.py kafka --bootstrap 127.0.0.1:19092 --input T --output T2 \\
        --group G --expect 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.cloudflare.transport import AsyncioTransport
from worker.settings import KafkaSettings
from worker.simulator import DEFAULT_TOKEN, catalog_id

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"


async def bare_http(
    base_url: str, count: int, concurrency: int, pool_size: int, seed: int, transport: str
) -> dict[str, Any]:
    """GET ``count`` detections URLs with ``concurrency`` tasks; return the figures."""
    urls = [
        f"{base_url}/accounts/{ACCOUNT}/email-security/investigate/{catalog_id(seed, i)}/detections"
        for i in range(count)
    ]
    headers = {"accept": "application/json", "authorization": f"Bearer {DEFAULT_TOKEN}"}
    statuses: dict[int, int] = {}
    queue = iter(urls)
    sizes = [pool_size] * (concurrency // pool_size) + [concurrency % pool_size]
    clients = []
    for size in sizes:
        if not size:
            continue
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        clients.append(
            httpx.AsyncClient(
                timeout=httpx.Timeout(30.0, connect=5.0),
                limits=limits,
                transport=AsyncioTransport(limits=limits) if transport == "asyncio" else None,
                follow_redirects=False,
                trust_env=False,
            )
        )
    free = [size for size in sizes if size]

    async def one_task() -> None:
        for url in queue:
            index = max(range(len(free)), key=free.__getitem__)
            free[index] -= 1
            try:
                response = await clients[index].get(url, headers=headers)
            finally:
                free[index] += 1
            _ = response.content
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    cpu_before, started = time.process_time(), time.monotonic()
    await asyncio.gather(*(one_task() for _ in range(concurrency)))
    seconds = time.monotonic() - started
    cpu = time.process_time() - cpu_before
    for client in clients:
        await client.aclose()
    return {
        "loop": "http",
        "count": count,
        "seconds": round(seconds, 3),
        "rate": round(count / seconds, 1),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_item": round(cpu / count * 1e6, 1),
        "pools": len(clients),
        "transport": transport,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


async def bare_kafka(args: argparse.Namespace) -> dict[str, Any]:
    """Consume ``--expect`` records and produce each one; return the figures."""
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=500,
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=KafkaSettings().max_batch_bytes,
    )
    await consumer.start()
    await producer.start()
    pad = b"x" * args.value_bytes
    pending: deque[tuple[asyncio.Future[Any], TopicPartition, int]] = deque()
    done_offsets: dict[TopicPartition, int] = {}
    seen = 0
    started: float | None = None
    cpu_before = time.process_time()
    last_commit = time.monotonic()

    async def settle(keep: int) -> None:
        while len(pending) > keep or (pending and pending[0][0].done()):
            future, tp, offset = pending.popleft()
            await future
            done_offsets[tp] = offset + 1

    try:
        while seen < args.expect:
            batch = await consumer.getmany(timeout_ms=1000, max_records=500)
            for tp, records in batch.items():
                for record in records:
                    if started is None:
                        started = time.monotonic()
                    value = record.value + pad[: max(0, args.value_bytes - len(record.value))]
                    future = await producer.send(args.output, key=record.key, value=value)
                    pending.append((future, tp, record.offset))
                    seen += 1
            await settle(args.max_pending)
            if time.monotonic() - last_commit >= args.commit_interval_s and done_offsets:
                await consumer.commit(
                    {tp: OffsetAndMetadata(o, "") for tp, o in done_offsets.items()}
                )
                last_commit = time.monotonic()
        await settle(0)
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in done_offsets.items()})
        seconds = time.monotonic() - (started or time.monotonic())
    finally:
        await producer.stop()
        await consumer.stop()
    cpu = time.process_time() - cpu_before
    return {
        "loop": "kafka",
        "count": seen,
        "seconds": round(seconds, 3),
        "rate": round(seen / max(seconds, 1e-9), 1),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_item": round(cpu / max(1, seen) * 1e6, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="loop", required=True)
    http = sub.add_parser("http", help="bare httpx GET loop against the simulator")
    http.add_argument("--base-url", required=True)
    http.add_argument("--count", type=int, default=100_000)
    http.add_argument("--concurrency", type=int, default=16)
    http.add_argument("--pool-size", type=int, default=4, help="connections per client")
    http.add_argument("--seed", type=int, default=1)
    http.add_argument(
        "--transport",
        choices=("httpx", "asyncio"),
        default="httpx",
        help="httpx's own transport (anyio sockets), or the worker's AsyncioTransport",
    )
    kafka = sub.add_parser("kafka", help="bare aiokafka consume->produce loop")
    kafka.add_argument("--bootstrap", required=True)
    kafka.add_argument("--input", required=True)
    kafka.add_argument("--output", required=True)
    kafka.add_argument("--group", required=True)
    kafka.add_argument("--expect", type=int, required=True, help="records to move, then exit")
    kafka.add_argument("--value-bytes", type=int, default=0, help="pad output values to N")
    kafka.add_argument("--max-pending", type=int, default=2000)
    kafka.add_argument("--commit-interval-s", type=float, default=1.0)
    args = parser.parse_args()
    if args.loop == "http":
        result = asyncio.run(
            bare_http(
                args.base_url,
                args.count,
                args.concurrency,
                args.pool_size,
                args.seed,
                args.transport,
            )
        )
    else:
        result = asyncio.run(bare_kafka(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
