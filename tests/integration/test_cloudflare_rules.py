"""Living within Cloudflare's rules: fault storms, the rate limit, bad input, secrets.

All on the real broker, with the simulator over real HTTP playing Cloudflare: its faults
by rate, its rate limit and lockout, and its counters (``lockouts_triggered`` counts only
the lockouts that calls to it caused).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from tests.conftest import (
    FIGURES,
    SimulatorFactory,
    Topics,
    make_settings,
    produce,
    read_all,
    wait_for,
)
from worker.kafka import committed_offsets, end_offsets
from worker.service import run_worker
from worker.simulator import catalog_id

SEED = 21
TOKEN = "tok-Sup3rSecret-do-not-leak-4242"  # a test token to grep for


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_fault_storm_loses_nothing_and_never_trips_the_lockout(
    bootstrap: str,
    topics: Topics,
    start_simulator: SimulatorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    total = 10_000
    faults = {
        "json_500": 0.10, "json_502": 0.10, "json_503": 0.10,
        "html_502": 0.01, "html_520": 0.01, "html_521": 0.01, "html_522": 0.01, "html_524": 0.01,
        "reset": 0.01, "reset_reused": 0.01, "timeout": 0.01,
    }  # fmt: skip
    api = await start_simulator(
        seed=SEED, accept_any_id=True, token=TOKEN, fault_rates=faults, slow_s=2.0,
        rate_limit=3000, rate_window_s=10.0, lockout_s=4.0,
    )  # fmt: skip
    ids = [f"storm-{i:05d}" for i in range(total)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    registry = CollectorRegistry()
    settings = make_settings(
        bootstrap, topics, api.base_url,
        cloudflare={
            "api_token": TOKEN, "timeout_s": 1.0, "budget_calls": 3000, "budget_window_s": 10.0,
            "max_in_flight": 32, "backoff_base_s": 0.05, "backoff_max_s": 1.0,
        },
    )  # fmt: skip
    caplog.set_level(logging.DEBUG)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop, registry=registry))
    try:

        async def halfway() -> bool:
            return api.sim.stats()["requests_total"] > total // 2

        await wait_for(halfway, deadline_s=300, what="half of the calls")
        api.sim.lock_out()  # another tool of the same user went over the limit: one 429 window

        async def all_committed() -> bool:
            ends = await end_offsets(bootstrap, topics.input)
            return await committed_offsets(bootstrap, topics.group, topics.input) == ends

        await wait_for(all_committed, deadline_s=400, what="every id committed")
    finally:
        stop.set()
        stats = await worker
    sim = api.sim.stats()
    events = await read_all(bootstrap, topics.output, stats.produced)
    dead = await read_all(bootstrap, topics.dlq, stats.dlq)
    enriched = {orjson.loads(r.value)["investigate_id"] for r in events}
    dlq = [orjson.loads(r.value) for r in dead]
    dead_ids = {base64.b64decode(d["original_value_b64"]).decode() for d in dlq}
    assert enriched | dead_ids == set(ids), "an id is neither enriched nor in the DLQ"
    assert {d["reason"] for d in dlq} <= {"retries_exhausted"}
    assert sim["rate_limited_total"] > 0  # the window happened, and we waited it out
    assert sim["lockouts_triggered"] == 0  # none caused by our own calls
    text = " ".join(d["detail"] for d in dlq) + caplog.text
    assert "PoolTimeout" not in text
    FIGURES["fault storm"] = (
        f"{total} ids: {len(enriched)} enriched, {len(dead_ids)} to the DLQ "
        f"(retries_exhausted), 0 lost; {sim['requests_total']} calls, "
        f"{sim['rate_limited_total']} answered 429 in the one window, 0 lockouts by us"
    )
    # The token never leaks: logs, DLQ records, metrics, exception text.
    assert TOKEN not in caplog.text
    assert all(TOKEN not in r.value.decode() for r in dead)
    assert TOKEN.encode() not in generate_latest(registry)
    assert all(TOKEN not in (r.exc_text or "") for r in caplog.records)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_budget_equal_to_the_limit_uses_it_fully_without_a_lockout(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    limit, window_s, windows = 100, 2.0, 4
    api = await start_simulator(
        seed=SEED, accept_any_id=True, rate_limit=limit, rate_window_s=window_s, lockout_s=30.0
    )
    await produce(bootstrap, topics.input, (f"budget-{i:05d}".encode() for i in range(2_000)))
    settings = make_settings(
        bootstrap, topics, api.base_url,
        cloudflare={"budget_calls": limit, "budget_window_s": window_s, "budget_safety": 1.0},
    )  # fmt: skip
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    try:

        async def first_call() -> bool:
            return api.sim.stats()["requests_total"] > 0

        await wait_for(first_call, what="the first call")
        started = time.monotonic()
        # Sample the count just before the start of window number `windows`.
        span_s = (windows - 0.5) * window_s

        async def span_over() -> bool:
            return time.monotonic() - started >= span_s

        await wait_for(span_over, deadline_s=60, what="the measured span")
        calls = api.sim.stats()["requests_total"]
    finally:
        stop.set()
        await worker
    sim = api.sim.stats()
    share = calls / (limit * windows)
    FIGURES["budget accuracy"] = (
        f"{calls} calls in {windows} windows of {limit}: {share:.1%} of the budget, "
        f"{sim['rate_limited_total']} 429s, {sim['lockouts_triggered']} lockouts"
    )
    assert sim["lockouts_triggered"] == 0
    assert sim["rate_limited_total"] == 0
    assert share >= 0.95


BAD_INPUT: list[tuple[bytes | None, str]] = [
    (None, "tombstone"),
    (b"", "empty"),
    (b" ", "empty"),
    (b"\n\t\r\n", "empty"),
    (b"x" * 70_000, "oversized"),
    (b"\xff", "undecodable"),
    (b"abc\xc3\x28", "undecodable"),
    (b"\xfe\xff\x00a", "undecodable"),
    (b"{", "malformed_json"),
    (b'{"investigate_id": "a",}', "malformed_json"),
    (b'["a"]', "wrong_type"),
    (b"[]", "wrong_type"),
    (b'{"investigate_id": 42}', "wrong_type"),
    (b'{"investigate_id": null}', "wrong_type"),
    (b'{"investigate_id": ["a"]}', "wrong_type"),
    (b'{"context": {"alert": 1}}', "missing_id"),
    (b"{}", "missing_id"),
    (b'{"investigate_id": ""}', "invalid_id"),
    (b"../../../zones", "invalid_id"),
    (b"a/b", "invalid_id"),
    (b"a\\b", "invalid_id"),
    (b"a?b=1", "invalid_id"),
    (b"a#frag", "invalid_id"),
    (b"a b", "invalid_id"),
    (b"a\x00b", "invalid_id"),
    (b"..", "invalid_id"),
    (b".", "invalid_id"),
    (b"%2e%2e", "invalid_id"),
    (b"a%2Fb", "invalid_id"),
    (b"x" * 300, "invalid_id"),
    ('{"investigate_id": "caf\u00e9"}'.encode(), "invalid_id"),
    (b'{"investigate_id": "ok-id", "account_id": "NOT-HEX"}', "invalid_account_id"),
    (b'{"investigate_id": "ok-id", "account_id": 7}', "invalid_account_id"),
    (
        b'{"investigate_id": "ok-id", "context": ' + b"[" * 300 + b"]" * 300 + b"}",
        "invalid_context",
    ),
    (b"unknown-to-cloudflare", "not_found"),
]


@pytest.mark.partitions(1)
async def test_bad_input_corpus_each_gets_its_reason_and_the_line_keeps_moving(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    assert len(BAD_INPUT) >= 30
    api = await start_simulator(seed=SEED)
    good = [catalog_id(SEED, i) for i in range(len(BAD_INPUT) + 1)]
    values: list[bytes | None] = []
    for i, (bad, _) in enumerate(BAD_INPUT):
        values += [good[i].encode(), bad]
    values.append(good[-1].encode())
    await produce(bootstrap, topics.input, values, partition=0)
    stats = await run_worker(make_settings(bootstrap, topics, api.base_url), burst=True)
    assert (stats.produced, stats.dlq) == (len(good), len(BAD_INPUT))
    events = await read_all(bootstrap, topics.output, len(good))
    assert sorted(orjson.loads(r.value)["investigate_id"] for r in events) == sorted(good)
    records = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.dlq, len(BAD_INPUT))]
    by_offset = {d["source"]["offset"]: d for d in records}
    for i, (bad, reason) in enumerate(BAD_INPUT):
        record = by_offset[2 * i + 1]  # good, bad, good, bad, ...
        assert record["reason"] == reason, (bad, record["detail"])
        original = record["original_value_b64"]
        assert (None if original is None else base64.b64decode(original)) == (
            None if bad is None else bad[: 256 * 1024]
        )
    ends = await end_offsets(bootstrap, topics.input)
    assert await committed_offsets(bootstrap, topics.group, topics.input) == ends
