"""The naive alternative: the worker a team writes in an afternoon with the official SDK.

One aiokafka group consumer; for each message, in order: take the id (a bare id or the JSON
form), call ``AsyncCloudflare.email_security.investigate.detections.get`` (the official
``cloudflare`` SDK, pinned in pyproject's dev extras, its default retries and timeouts),
produce the answer as JSON and wait for the broker, commit the message's offset. A failure
is printed and the message skipped. No concurrency, no budget, no dedup.

``bench/run.py`` (measure 3) runs it against the simulator at 100 ms latency and compares
its throughput with the worker's. It exits after ``--expect`` messages and prints one JSON
line with what it did.

    .venv/bin/python bench/baseline_worker.py --bootstrap 127.0.0.1:19092 --input T \\
        --output T2 --group G --base-url http://127.0.0.1:PORT/client/v4 --expect 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import OffsetAndMetadata, TopicPartition
from cloudflare import AsyncCloudflare

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
TOKEN = "local-simulator-token"  # the simulator's well-known dev token


def investigate_id_of(value: bytes) -> str:
    """A bare id, or the ``investigate_id`` of the JSON form."""
    text = value.decode()
    if text.startswith("{"):
        return str(json.loads(text)["investigate_id"])
    return text.strip()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Process ``--expect`` messages one by one; return counts and timing."""
    client = AsyncCloudflare(api_token=TOKEN, base_url=args.base_url)
    consumer = AIOKafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    done = failed = 0
    started: float | None = None
    try:
        while done + failed < args.expect:
            record = await consumer.getone()
            if started is None:
                started = time.monotonic()
            investigate_id = investigate_id_of(record.value)
            try:
                detections = await client.email_security.investigate.detections.get(
                    investigate_id, account_id=ACCOUNT
                )
            except Exception as exc:
                print(f"failed {investigate_id}: {exc}", file=sys.stderr)
                failed += 1
            else:
                await producer.send_and_wait(
                    args.output, key=record.key, value=detections.to_json().encode()
                )
                done += 1
            tp = TopicPartition(record.topic, record.partition)
            await consumer.commit({tp: OffsetAndMetadata(record.offset + 1, "")})
        seconds = time.monotonic() - (started or time.monotonic())
    finally:
        await producer.stop()
        await consumer.stop()
        await client.close()
    return {
        "done": done,
        "failed": failed,
        "seconds": round(seconds, 3),
        "rate": round(done / max(seconds, 1e-9), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:P/client/v4")
    parser.add_argument("--expect", type=int, required=True, help="messages to process")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
