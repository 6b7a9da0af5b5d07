"""When no call can succeed, input pauses and nothing is dead-lettered or committed."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import (
    SimulatorFactory,
    Topics,
    make_settings,
    produce,
    read_all,
    wait_for,
)
from worker.kafka import committed_offsets, end_offsets
from worker.service import run_worker
from worker.simulator import DEFAULT_TOKEN, catalog_id

SEED = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_refused_credentials_pause_input_turn_readiness_red_then_recover(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    api = await start_simulator(seed=SEED, token="rotated-token")  # ours is now refused
    ids = [catalog_id(SEED, i) for i in range(40)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    port = _free_port()
    registry = CollectorRegistry()
    # Refused credentials hold every call for backoff_max_s between probes.
    settings = make_settings(
        bootstrap,
        topics,
        api.base_url,
        metrics={"enabled": True, "port": port},
        cloudflare={"max_in_flight": 4, "backoff_max_s": 2.0},
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop, registry=registry))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def refused_and_red() -> bool:
                try:
                    ready = await client.get("/readyz")
                except httpx.TransportError:
                    return False
                return (
                    ready.status_code == 503
                    and registry.get_sample_value("enrich_api_credentials_refused") == 1
                )

            await wait_for(refused_and_red, what="readiness red on refused credentials")
            assert "refuses the credentials" in (await client.get("/readyz")).text
            calls_while_refused = api.sim.stats()["requests_total"]
            assert registry.get_sample_value("enrich_events_produced_total") == 0
            assert (
                registry.get_sample_value("enrich_dlq_records_total", {"reason": "auth_failed"})
                is None
            )
            assert await committed_offsets(bootstrap, topics.group, topics.input) == {}

            # The token works again (e.g. the secret was rotated back): the worker resumes
            # by itself, with no restart.
            api.sim.config = dataclasses.replace(api.sim.config, token=DEFAULT_TOKEN)

            async def caught_up() -> bool:
                return await committed_offsets(
                    bootstrap, topics.group, topics.input
                ) == await end_offsets(bootstrap, topics.input)

            await wait_for(caught_up, what="every id committed after recovery")
            assert (await client.get("/readyz")).status_code == 200
            assert registry.get_sample_value("enrich_api_credentials_refused") == 0
    finally:
        stop.set()
        stats = await worker
    assert stats.produced == len(ids)
    assert stats.dlq == 0
    events = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output, len(ids))]
    assert sorted(e["investigate_id"] for e in events) == sorted(ids)
    # Refused calls were probes held by the budget (one wave of max_in_flight per 2 s
    # interval), not a storm of one call per message.
    assert calls_while_refused <= settings.cloudflare.max_in_flight * 2


@pytest.mark.partitions(1)
async def test_liveness_fails_when_a_partition_makes_no_progress(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    ids = [catalog_id(SEED, i) for i in range(5)]
    api = await start_simulator(seed=SEED, latency_by_id={ids[2]: 20.0})  # a wedged call
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    port = _free_port()
    settings = make_settings(
        bootstrap,
        topics,
        api.base_url,
        metrics={"enabled": True, "port": port},
        pipeline={"stuck_after_s": 1.0, "shutdown_grace_s": 0.2},
    )
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def live() -> int:
                try:
                    return (await client.get("/healthz")).status_code
                except httpx.TransportError:
                    return 0

            async def is_live() -> bool:
                return await live() == 200

            async def is_dead() -> bool:
                return await live() == 503

            await wait_for(is_live, what="liveness green while work flows")
            await wait_for(is_dead, deadline_s=15, what="liveness red when stuck")
            body = (await client.get("/healthz")).text
            assert "no progress" in body
            assert topics.input in body
            assert (await client.get("/readyz")).status_code == 200  # still ready
    finally:
        stop.set()
        stats = await worker
    assert stats.produced == 4  # the wedged id was abandoned at shutdown, not committed
    committed = await committed_offsets(bootstrap, topics.group, topics.input)
    assert committed.get(0, 0) <= 2
