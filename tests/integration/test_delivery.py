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
from pathlib import Path

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
    read_to_end,
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
    """Worker processes started and killed by a test; all are killed at the end.

    Each process logs (WARNING and up) to its own file under ``log_dir``, so that a failing
    test can say what the workers complained about (``errors()``).
    """

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, **extra: str) -> asyncio.subprocess.Process:
        with (self.log_dir / f"worker-{len(self.procs):02d}.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "run",
                env={**self.env, **extra}, cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def errors(self) -> list[str]:
        """ERROR lines the workers logged (an exception means a bug, not an injected kill)."""
        return [
            line
            for path in sorted(self.log_dir.glob("worker-*.log"))
            for line in path.read_text(errors="replace").splitlines()
            if '"level":"ERROR"' in line.replace(" ", "") or "Traceback" in line
        ]

    async def kill(self, proc: asyncio.subprocess.Process) -> None:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@asynccontextmanager
async def workers(env: dict[str, str], log_dir: Path) -> AsyncIterator[Workers]:
    group = Workers(env, log_dir)
    try:
        yield group
    finally:
        await group.close()


async def output_ids(bootstrap: str, topic: str) -> Counter[str]:
    records = await read_to_end(bootstrap, topic)
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
    bootstrap: str,
    topics: Topics,
    start_simulator: SimulatorFactory,
    tmp_path: Path,
) -> None:
    total, kills = 10_000, 20
    api = await start_simulator(seed=SEED, accept_any_id=True)
    ids = [f"kill9-{i:05d}-{catalog_id(SEED, i)[:16]}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    async with workers(worker_env(bootstrap, topics, api.base_url), tmp_path) as group:
        await kill_and_restart(bootstrap, topics, group, total, kills, seed=1)
    dlq = await count_outputs(bootstrap, topics.dlq)
    assert dlq == 0, f"{dlq} DLQ records; worker errors: {group.errors()[:5]}"
    seen = await output_ids(bootstrap, topics.output)
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
    bootstrap: str,
    topics: Topics,
    start_simulator: SimulatorFactory,
    tmp_path: Path,
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
    async with workers(env, tmp_path) as group:
        await kill_and_restart(bootstrap, topics, group, total, kills, seed=2)
    dlq = await count_outputs(bootstrap, topics.dlq)
    assert dlq == 0, f"{dlq} DLQ records; worker errors: {group.errors()[:5]}"
    seen = await output_ids(bootstrap, topics.output)  # read_committed reader
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
    bootstrap: str,
    topics: Topics,
    start_simulator: SimulatorFactory,
    tmp_path: Path,
) -> None:
    total = 3_000
    # Some latency, so that the run is still going when the broker goes away.
    api = await start_simulator(seed=SEED, accept_any_id=True, latency_s=0.01)
    ids = [f"brk-{i:05d}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    async with workers(worker_env(bootstrap, topics, api.base_url), tmp_path) as group:
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
    seen = await output_ids(bootstrap, topics.output)
    assert set(seen) == set(ids)
    FIGURES["broker restart"] = (
        f"{total}/{total} ids, {sum(seen.values()) - total} duplicates; output flowed again "
        f"{recovery_s:.1f} s after the broker was back ({back_at - stopped_at:.1f} s outage)"
    )


@pytest.mark.partitions(6)
async def test_three_replicas_one_killed_one_added_loses_nothing(
    bootstrap: str,
    topics: Topics,
    start_simulator: SimulatorFactory,
    tmp_path: Path,
) -> None:
    total = 6_000
    api = await start_simulator(seed=SEED, accept_any_id=True, latency_s=0.005)
    ids = [f"grp-{i:05d}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    async with workers(worker_env(bootstrap, topics, api.base_url), tmp_path) as group:
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
    seen = await output_ids(bootstrap, topics.output)
    assert set(seen) == set(ids)
    FIGURES["3 replicas, 1 killed, 1 added"] = (
        f"{total}/{total} ids, {sum(seen.values()) - total} duplicates"
    )


@pytest.mark.partitions(3)
async def test_sigterm_mid_run_drains_exits_0_and_commits_exactly_what_was_acknowledged(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    total, grace_s = 5_000, 20
    # Enough latency that the signal finds MAX_PENDING messages in flight.
    api = await start_simulator(seed=SEED, accept_any_id=True, latency_s=0.05)
    ids = [f"term-{i:05d}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    env = worker_env(
        bootstrap, topics, api.base_url, ENRICH_PIPELINE__SHUTDOWN_GRACE_S=str(grace_s)
    )
    async with workers(env, tmp_path) as group:
        proc = await group.start()

        async def under_way() -> bool:
            return await count_outputs(bootstrap, topics.output) > 500

        await wait_for(under_way, deadline_s=60, what="the run to get going")
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), timeout=grace_s + 10)
        took_s = time.monotonic() - signalled
    assert code == 0, group.errors()[:5]
    assert took_s < grace_s
    produced = await count_outputs(bootstrap, topics.output)
    assert produced < total, "the signal came too late to test a drain"
    outputs = {
        orjson.loads(r.value)["investigate_id"]
        for r in await read_all(bootstrap, topics.output, produced)
    }
    committed = await committed_offsets(bootstrap, topics.group, topics.input)
    inputs = await read_all(bootstrap, topics.input, total)
    below_commit = {r.value.decode() for r in inputs if r.offset < committed.get(r.partition, 0)}
    # Every message below the commit point was acknowledged, and the drain left nothing
    # acknowledged beyond it: the commit is exactly the acknowledged prefix.
    assert below_commit == outputs
    FIGURES["SIGTERM mid-run"] = (
        f"exit 0 after {took_s:.1f} s (grace {grace_s} s); {len(outputs)} acknowledged = "
        f"{len(below_commit)} below the committed offsets"
    )
