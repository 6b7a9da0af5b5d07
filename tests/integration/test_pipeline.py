"""The whole line on the real broker and the simulator over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import uuid

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import (
    ACCOUNT,
    SimulatorFactory,
    TopicReader,
    Topics,
    make_settings,
    produce,
    read_all,
    wait_for,
)
from worker.kafka import committed_offsets, end_offsets
from worker.service import run_worker
from worker.simulator import catalog_id

SEED = 1


async def test_ids_in_events_out_bad_input_to_dlq(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    api = await start_simulator(seed=SEED)
    good = [catalog_id(SEED, i) for i in range(150)]
    values: list[bytes | None] = []
    for i, investigate_id in enumerate(good):
        if i % 3 == 0:
            values.append(investigate_id.encode())
        else:
            doc = {"investigate_id": investigate_id, "context": {"case": i, "tags": ["a", None]}}
            if i % 3 == 2:
                doc["account_id"] = ACCOUNT
            values.append(orjson.dumps(doc))
    bad: dict[bytes | None, str] = {
        b"": "empty",
        b"   \n": "empty",
        b"\xff\xfe\x00": "undecodable",
        b'{"investigate_id": ': "malformed_json",
        b"[1, 2]": "wrong_type",
        b'{"context": {}}': "missing_id",
        b"../../zones": "invalid_id",
        b"a/b": "invalid_id",
        b'{"investigate_id": "x", "account_id": "nope"}': "invalid_account_id",
        b"no-such-id-in-the-catalog": "not_found",
        None: "tombstone",
    }
    # Bad messages are spread between good ones so that they must not stop the line.
    to_place = list(bad)
    mixed: list[bytes | None] = []
    for i, value in enumerate(values):
        mixed.append(value)
        if i % 13 == 0 and to_place:
            mixed.append(to_place.pop())
    mixed.extend(to_place)
    await produce(bootstrap, topics.input, mixed)

    registry = CollectorRegistry()
    settings = make_settings(bootstrap, topics, api.base_url)
    stats = await run_worker(settings, burst=True, registry=registry)

    assert stats.consumed == len(mixed)
    assert stats.produced == len(good)
    assert stats.dlq == len(bad)
    records = await read_all(bootstrap, topics.output, len(good))
    events = [orjson.loads(r.value) for r in records]
    assert sorted(e["investigate_id"] for e in events) == sorted(good)
    for record, event in zip(records, events, strict=True):
        assert record.key == event["investigate_id"].encode()
        index = good.index(event["investigate_id"])
        expected_context = None if index % 3 == 0 else {"case": index, "tags": ["a", None]}
        assert event["context"] == expected_context
        assert event["account_id"] == ACCOUNT
        assert event["source"]["topic"] == topics.input

    dlq = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.dlq, len(bad))]
    by_value = {
        None if d["original_value_b64"] is None else base64.b64decode(d["original_value_b64"]): d
        for d in dlq
    }
    assert {value: d["reason"] for value, d in by_value.items()} == bad
    assert by_value[b"no-such-id-in-the-catalog"]["last_http_status"] == 404
    assert by_value[b"no-such-id-in-the-catalog"]["last_error_codes"] == [7003]

    ends = await end_offsets(bootstrap, topics.input)
    assert await committed_offsets(bootstrap, topics.group, topics.input) == ends
    assert registry.get_sample_value("enrich_messages_consumed_total") == len(mixed)
    assert registry.get_sample_value("enrich_events_produced_total") == len(good)
    assert registry.get_sample_value("enrich_dlq_records_total", {"reason": "empty"}) == 2
    assert registry.get_sample_value("enrich_api_requests_total", {"status": "200"}) == len(good)
    assert registry.get_sample_value("enrich_api_requests_total", {"status": "404"}) == 1


async def test_restart_after_commit_processes_nothing_twice(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    api = await start_simulator(seed=SEED)
    settings = make_settings(bootstrap, topics, api.base_url)
    first = [catalog_id(SEED, i) for i in range(60)]
    await produce(bootstrap, topics.input, (i.encode() for i in first))

    assert (await run_worker(settings, burst=True)).produced == 60
    calls_after_first_run = api.sim.stats()["requests_total"]

    again = await run_worker(settings, burst=True)
    assert again.consumed == 0
    assert api.sim.stats()["requests_total"] == calls_after_first_run

    more = [catalog_id(SEED, i) for i in range(60, 90)]
    await produce(bootstrap, topics.input, (i.encode() for i in more))
    third = await run_worker(settings, burst=True)
    assert third.consumed == 30

    events = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output, 90)]
    ids = [e["investigate_id"] for e in events]
    assert len(ids) == 90
    assert sorted(ids) == sorted(first + more)


@pytest.mark.partitions(1)
async def test_commit_never_passes_an_unfinished_message(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    """Answers come back in reverse order; the commit must wait for the first one."""
    count = 20
    ids = [catalog_id(SEED, i) for i in range(count)]
    # The first message is answered last, the last one first.
    latency = {investigate_id: 0.15 * (count - i) for i, investigate_id in enumerate(ids)}
    api = await start_simulator(seed=SEED, latency_by_id=latency)
    await produce(bootstrap, topics.input, (i.encode() for i in ids), partition=0)
    settings = make_settings(bootstrap, topics, api.base_url, cloudflare={"max_in_flight": count})

    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    try:
        committed_while_first_pending = await _watch_commits(bootstrap, topics, ids, worker)
        # Out-of-order completion happened, and the commit held at the first message.
        assert committed_while_first_pending
        assert set(committed_while_first_pending) == {0}

        async def fully_committed() -> bool:
            return (await committed_offsets(bootstrap, topics.group, topics.input)).get(0) == count

        await wait_for(fully_committed, what="the commit to reach the end")
    finally:
        stop.set()
        stats = await worker
    assert stats.produced == count


async def _watch_commits(
    bootstrap: str, topics: Topics, ids: list[str], worker: asyncio.Task[object]
) -> list[int]:
    """Sample the committed offset until every event is out; check each sample.

    The commit is read before the output, so every id below it must already be visible.
    Returns the commits seen while the first message was unfinished and most others done.
    """
    seen: set[str] = set()
    held: list[int] = []
    async with TopicReader(bootstrap, topics.output) as output:
        for _ in range(2_000):
            if len(seen) == len(ids) and held:
                return held
            assert not worker.done(), "the worker stopped early"
            committed = (await committed_offsets(bootstrap, topics.group, topics.input)).get(0, 0)
            await output.poll(timeout_ms=50)
            seen = {orjson.loads(r.value)["investigate_id"] for r in output.records}
            assert set(ids[:committed]) <= seen, f"commit {committed} passed an unfinished message"
            if ids[0] not in seen and len(seen) > len(ids) // 2:
                held.append(committed)
    raise AssertionError(f"no progress: {len(seen)} of {len(ids)} events seen")


async def test_repeated_ids_spend_the_budget_once(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    api = await start_simulator(seed=SEED)
    unique = [catalog_id(SEED, i) for i in range(100)]
    repeated = unique + unique[:30] + unique[10:25]  # 45 repeats, some concurrent
    await produce(bootstrap, topics.input, (i.encode() for i in repeated))
    registry = CollectorRegistry()
    stats = await run_worker(
        make_settings(bootstrap, topics, api.base_url), burst=True, registry=registry
    )
    assert stats.produced == len(repeated)  # every message still gets its event
    assert api.sim.stats()["requests_total"] == len(unique)
    saved = sum(
        registry.get_sample_value("enrich_cache_hits_total", {"kind": kind}) or 0
        for kind in ("cache", "shared")
    )
    assert saved == len(repeated) - len(unique)


async def test_topics_with_a_small_max_message_bytes_get_smaller_batches(
    bootstrap: str, start_simulator: SimulatorFactory
) -> None:
    # Found by a tester: with batches larger than the topic accepts, small events went to
    # the DLQ as event_too_large and the producer stalled.
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from worker.kafka import batch_size_for

    tag = uuid.uuid4().hex[:10]
    topics = Topics(f"t-{tag}-ids", f"t-{tag}-events", f"t-{tag}-dlq", f"g-{tag}")
    small = {"max.message.bytes": "20000"}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([
            NewTopic(topics.input, 3, 1),
            NewTopic(topics.output, 3, 1, topic_configs=small),
            NewTopic(topics.dlq, 1, 1, topic_configs=small),
        ])  # fmt: skip
    finally:
        await admin.close()
    api = await start_simulator(seed=SEED)
    ids = [catalog_id(SEED, i) for i in range(300)]
    await produce(bootstrap, topics.input, [i.encode() for i in ids])
    settings = make_settings(bootstrap, topics, api.base_url)
    assert await batch_size_for(settings.kafka) <= 20000 - 1024

    stats = await run_worker(settings, burst=True)

    assert (stats.produced, stats.dlq) == (300, 0)
    events = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output, 300)]
    assert sorted(e["investigate_id"] for e in events) == sorted(ids)
