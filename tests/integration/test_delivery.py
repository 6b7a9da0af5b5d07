"""Delivery guarantees under real failures: kill -9, broker restarts, replicas coming and going.

These run the worker as separate processes (``python -m worker run``) against the real
broker and an in-process simulator, and check the output topic afterwards. They are
marked slow and run in CI. The figures they measure (duplicates per kill, recovery time)
are printed at the end of the test run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
import pytest

from tests.conftest import (
    ACCOUNT,
    FIGURES,
    ROOT,
    SimulatorFactory,
    Topics,
    produce,
    read_all,
    wait_for,
)
from worker.kafka import committed_offsets, end_offsets
from worker.simulator import DEFAULT_TOKEN, catalog_id

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SEED = 11
MAX_PENDING = 200


def worker_env(bootstrap: str, topics: Topics, base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    env.update(
        ENRICH_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        ENRICH_KAFKA__INPUT_TOPIC=topics.input,
        ENRICH_KAFKA__OUTPUT_TOPIC=topics.output,
        ENRICH_KAFKA__DLQ_TOPIC=topics.dlq,
        ENRICH_KAFKA__GROUP_ID=topics.group,
        ENRICH_KAFKA__SESSION_TIMEOUT_MS="6000",
        ENRICH_CLOUDFLARE__BASE_URL=base_url,
        ENRICH_CLOUDFLARE__ACCOUNT_ID=ACCOUNT,
        ENRICH_CLOUDFLARE__API_TOKEN=DEFAULT_TOKEN,
        ENRICH_CLOUDFLARE__BUDGET_CALLS="1000000",
        ENRICH_CLOUDFLARE__BACKOFF_BASE_S="0.05",
        ENRICH_CLOUDFLARE__BACKOFF_MAX_S="0.5",
        ENRICH_PIPELINE__MAX_PENDING_MESSAGES=str(MAX_PENDING),
        ENRICH_PIPELINE__COMMIT_INTERVAL_S="0.2",
        ENRICH_METRICS__ENABLED="false",
        ENRICH_LOG__LEVEL="WARNING",
    )
    env.update(extra)
    return env


class Workers:
    """Worker processes started and killed by a test; all are killed at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, **extra: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "worker", "run",
            env={**self.env, **extra}, cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def workers(env: dict[str, str]) -> AsyncIterator[Workers]:
    group = Workers(env)
    try:
        yield group
    finally:
        await group.close()


async def output_ids(bootstrap: str, topic: str, at_least: int) -> Counter[str]:
    records = await read_all(bootstrap, topic, at_least, deadline_s=120)
    return Counter(orjson.loads(r.value)["investigate_id"] for r in records)


async def fully_committed(bootstrap: str, topics: Topics) -> bool:
    ends = await end_offsets(bootstrap, topics.input)
    return await committed_offsets(bootstrap, topics.group, topics.input) == ends


async def count_outputs(bootstrap: str, topic: str) -> int:
    return sum((await end_offsets(bootstrap, topic)).values())


async def kill_and_restart(
    bootstrap: str, topics: Topics, group: Workers, total: int, kills: int, seed: int
) -> None:
    """Kill the worker with SIGKILL ``kills`` times at random moments, restarting it."""
    rng = random.Random(seed)
    proc = await group.start()
    for _ in range(kills):
        # Wait for some progress, then kill at a random moment within the next second.
        before = await count_outputs(bootstrap, topics.output)

        async def progressed(before: int = before) -> bool:
            return await count_outputs(bootstrap, topics.output) > before or (
                await fully_committed(bootstrap, topics)
            )

        await wait_for(progressed, deadline_s=60, what="progress before the next kill")
        await asyncio.sleep(rng.uniform(0, 1.0))  # the random moment of the kill
        await group.kill(proc)
        proc = await group.start()
    await wait_for(
        lambda: fully_committed(bootstrap, topics), deadline_s=300, what="all input committed"
    )


@pytest.mark.partitions(3)
async def test_kill_9_twenty_times_loses_nothing(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    total, kills = 10_000, 20
    api = await start_simulator(seed=SEED, accept_any_id=True)
    ids = [f"kill9-{i:05d}-{catalog_id(SEED, i)[:16]}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    async with workers(worker_env(bootstrap, topics, api.base_url)) as group:
        await kill_and_restart(bootstrap, topics, group, total, kills, seed=1)
    seen = await output_ids(bootstrap, topics.output, total)
    missing = set(ids) - set(seen)
    assert not missing, f"{len(missing)} ids lost, e.g. {sorted(missing)[:3]}"
    duplicates = sum(seen.values()) - total
    FIGURES["kill -9 x20 (at least once)"] = (
        f"{total}/{total} ids present, {duplicates} duplicates "
        f"({duplicates / kills:.0f} per kill; bound {MAX_PENDING} in flight + one commit interval)"
    )
    assert duplicates <= kills * (MAX_PENDING + 500)


@pytest.mark.partitions(3)
async def test_kill_9_in_exactly_once_mode_shows_each_id_once(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    total, kills = 10_000, 20
    api = await start_simulator(seed=SEED, accept_any_id=True)
    ids = [f"eos-{i:05d}-{catalog_id(SEED, i)[:16]}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    env = worker_env(
        bootstrap,
        topics,
        api.base_url,
        ENRICH_PIPELINE__EXACTLY_ONCE="true",
        ENRICH_KAFKA__TRANSACTIONAL_ID=f"{topics.group}-tx",
    )
    async with workers(env) as group:
        await kill_and_restart(bootstrap, topics, group, total, kills, seed=2)
    seen = await output_ids(bootstrap, topics.output, total)  # read_committed reader
    assert set(seen) == set(ids)
    repeated = {i: n for i, n in seen.items() if n > 1}
    FIGURES["kill -9 x20 (exactly once)"] = (
        f"{len(seen)}/{total} ids, {sum(seen.values()) - total} duplicates for read_committed"
    )
    assert not repeated, f"{len(repeated)} ids seen more than once, e.g. {list(repeated)[:3]}"


def broker_script(command: str) -> None:
    """Run deploy/local/kafka.sh for the broker the tests use (same env as make test)."""
    port = os.environ.get("ENRICH_TEST_BOOTSTRAP", "127.0.0.1:19092").rsplit(":", 1)[1]
    env = {**os.environ, "KAFKA_PORT": os.environ.get("KAFKA_PORT", port)}
    subprocess.run(
        [str(ROOT / "deploy/local/kafka.sh"), command], env=env, check=True, timeout=180,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.partitions(3)
async def test_broker_restart_mid_run_loses_nothing_and_needs_no_worker_restart(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    total = 3_000
    # Some latency, so that the run is still going when the broker goes away.
    api = await start_simulator(seed=SEED, accept_any_id=True, latency_s=0.01)
    ids = [f"brk-{i:05d}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    async with workers(worker_env(bootstrap, topics, api.base_url)) as group:
        proc = await group.start()

        async def started() -> bool:
            return await count_outputs(bootstrap, topics.output) > 200

        await wait_for(started, deadline_s=60, what="the run to get going")
        stopped_at = time.monotonic()
        await asyncio.to_thread(broker_script, "stop")
        await asyncio.sleep(3)  # the outage itself, not a wait for a condition
        await asyncio.to_thread(broker_script, "start")
        back_at = time.monotonic()
        before = await count_outputs(bootstrap, topics.output)

        async def recovered() -> bool:
            return await count_outputs(bootstrap, topics.output) > before

        await wait_for(recovered, deadline_s=120, what="output to flow again")
        recovery_s = time.monotonic() - back_at
        await wait_for(
            lambda: fully_committed(bootstrap, topics), deadline_s=300, what="all committed"
        )
        assert proc.returncode is None, "the worker died instead of riding out the outage"
    seen = await output_ids(bootstrap, topics.output, total)
    assert set(seen) == set(ids)
    FIGURES["broker restart"] = (
        f"{total}/{total} ids, {sum(seen.values()) - total} duplicates; output flowed again "
        f"{recovery_s:.1f} s after the broker was back ({back_at - stopped_at:.1f} s outage)"
    )


@pytest.mark.partitions(6)
async def test_three_replicas_one_killed_one_added_loses_nothing(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    total = 6_000
    api = await start_simulator(seed=SEED, accept_any_id=True, latency_s=0.005)
    ids = [f"grp-{i:05d}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    async with workers(worker_env(bootstrap, topics, api.base_url)) as group:
        replicas = [await group.start() for _ in range(3)]

        async def some() -> bool:
            return await count_outputs(bootstrap, topics.output) > 1_000

        await wait_for(some, deadline_s=60, what="the group to get going")
        await group.kill(replicas[1])

        async def more() -> bool:
            return await count_outputs(bootstrap, topics.output) > 3_000

        await wait_for(more, deadline_s=120, what="progress after the kill")
        await group.start()
        await wait_for(
            lambda: fully_committed(bootstrap, topics), deadline_s=300, what="all committed"
        )
    seen = await output_ids(bootstrap, topics.output, total)
    assert set(seen) == set(ids)
    FIGURES["3 replicas, 1 killed, 1 added"] = (
        f"{total}/{total} ids, {sum(seen.values()) - total} duplicates"
    )
