"""Shared fixtures: the real local broker, fresh topics per test, an in-process simulator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from worker.httpserver import bound_port, serve
from worker.kafka import ensure_topics
from worker.settings import Settings, load_settings
from worker.simulator import API_PREFIX, DEFAULT_TOKEN, Simulator, SimulatorConfig

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = os.environ.get("ENRICH_TEST_BOOTSTRAP", "127.0.0.1:19092")
ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/integration/ needs the broker and is marked so."""
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)


FIGURES: dict[str, str] = {}
"""Measurements that tests report (e.g. duplicates per kill), printed at the end of the run."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly how many tests ran against the real broker (they are never skipped)."""
    for name, figure in FIGURES.items():
        terminalreporter.write_line(f"figure: {name}: {figure}")
    ran = {
        outcome: sum(
            1 for r in terminalreporter.stats.get(outcome, []) if "integration" in r.keywords
        )
        for outcome in ("passed", "failed", "skipped")
    }
    if any(ran.values()):
        terminalreporter.write_line(
            f"integration tests on the real Kafka broker at {BOOTSTRAP}: "
            f"{ran['passed']} passed, {ran['failed']} failed, {ran['skipped']} skipped"
        )


@pytest.fixture(scope="session")
def bootstrap() -> str:
    """The address of a ready local broker; fails (never skips) when there is none."""
    probe = subprocess.run(
        [sys.executable, str(ROOT / "deploy/local/kafka_ready.py"), "-q", BOOTSTRAP],
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        pytest.fail(
            f"no Kafka broker answers on {BOOTSTRAP}: start it with "
            "`deploy/local/kafka.sh start` (make test does this for you)"
        )
    return BOOTSTRAP


@dataclass(frozen=True)
class Topics:
    """Fresh topic names and a group id for one test."""

    input: str
    output: str
    dlq: str
    group: str


@pytest.fixture
async def topics(bootstrap: str, request: pytest.FixtureRequest) -> Topics:
    """Create fresh input/output/DLQ topics (partitions from the `partitions` marker)."""
    marker = request.node.get_closest_marker("partitions")
    partitions = 3 if marker is None else int(marker.args[0])
    tag = uuid.uuid4().hex[:10]
    names = Topics(f"t-{tag}-ids", f"t-{tag}-events", f"t-{tag}-dlq", f"g-{tag}")
    await ensure_topics(
        bootstrap, {names.input: partitions, names.output: partitions, names.dlq: 1}
    )
    return names


@dataclass
class RunningSimulator:
    """An in-process simulator and the base URL the worker should use."""

    sim: Simulator
    base_url: str


SimulatorFactory = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def start_simulator() -> AsyncIterator[SimulatorFactory]:
    """Start simulators on free ports; they stop at the end of the test."""
    servers: list[asyncio.Server] = []

    async def start(**config: Any) -> RunningSimulator:
        # Cloudflare's limit is off unless a test asks for it: most tests are about other
        # things and send more than 1,200 calls in 5 minutes.
        config.setdefault("rate_limit", 0)
        sim = Simulator(SimulatorConfig(**config))
        server = await serve(sim, host="127.0.0.1", port=0)
        servers.append(server)
        return RunningSimulator(sim, f"http://127.0.0.1:{bound_port(server)}{API_PREFIX}")

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def make_settings(
    bootstrap: str, topics: Topics, base_url: str, **sections: dict[str, Any]
) -> Settings:
    """Settings for a test: its topics, the simulator, no metrics port unless asked."""
    kafka = {
        "bootstrap_servers": bootstrap,
        "input_topic": topics.input,
        "output_topic": topics.output,
        "dlq_topic": topics.dlq,
        "group_id": topics.group,
        **sections.pop("kafka", {}),
    }
    cloudflare = {
        "base_url": base_url,
        "account_id": ACCOUNT,
        "api_token": DEFAULT_TOKEN,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        **sections.pop("cloudflare", {}),
    }
    pipeline = {"commit_interval_s": 0.1, "shutdown_grace_s": 10, **sections.pop("pipeline", {})}
    metrics = {"enabled": False, **sections.pop("metrics", {})}
    return load_settings(
        kafka=kafka, cloudflare=cloudflare, pipeline=pipeline, metrics=metrics, **sections
    )


async def produce(
    bootstrap: str, topic: str, values: Iterable[bytes | None], *, partition: int | None = None
) -> None:
    """Produce values in order (to one partition if given), waiting for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            key = b"tombstone-key" if value is None else None  # Kafka needs one of the two
            await producer.send_and_wait(topic, value=value, key=key, partition=partition)
    finally:
        await producer.stop()


class TopicReader:
    """Reads a topic from the beginning and keeps everything it saw."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.records: list[Any] = []
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level="read_committed",
        )

    async def __aenter__(self) -> TopicReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self, timeout_ms: int = 100) -> int:
        """Read what is available now; return how many new records arrived."""
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        new = [r for records in batch.values() for r in records]
        self.records.extend(new)
        return len(new)

    async def until(self, count: int, *, deadline_s: float = 60) -> list[Any]:
        """Read until ``count`` records were seen, failing after ``deadline_s``."""
        end = time.monotonic() + deadline_s
        while len(self.records) < count:
            if time.monotonic() > end:
                raise AssertionError(f"saw {len(self.records)} records, expected {count}")
            await self.poll()
        return self.records


async def read_all(bootstrap: str, topic: str, count: int, *, deadline_s: float = 60) -> list[Any]:
    """Every record of ``topic`` once ``count`` of them arrived (then a short extra look)."""
    async with TopicReader(bootstrap, topic) as reader:
        await reader.until(count, deadline_s=deadline_s)
        await reader.poll(timeout_ms=300)  # anything beyond count would show up here
        return reader.records


async def read_to_end(bootstrap: str, topic: str, *, deadline_s: float = 120) -> list[Any]:
    """Every record of ``topic`` up to its end as of now (for a ``read_committed`` reader
    the last stable offset), however many repeats it holds."""
    async with TopicReader(bootstrap, topic) as reader:
        consumer = reader._consumer
        end = time.monotonic() + deadline_s
        while not consumer.assignment():
            assert time.monotonic() < end, f"no partitions of {topic} assigned"
            await reader.poll()
        ends = await consumer.end_offsets(list(consumer.assignment()))
        for tp, last in ends.items():
            while await consumer.position(tp) < last:
                assert time.monotonic() < end, f"{topic}[{tp.partition}] not read to {last}"
                await reader.poll()
        return reader.records


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, deadline_s: float = 30, what: str = "condition"
) -> None:
    """Poll an async condition until true, failing after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not await condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        await asyncio.sleep(0.05)
