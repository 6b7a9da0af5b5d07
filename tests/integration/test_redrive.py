"""Redrive: DLQ records go back to the input, byte for byte, and are enriched this time."""

from __future__ import annotations

import dataclasses

import orjson

from tests.conftest import SimulatorFactory, Topics, make_settings, produce, read_all
from worker.redrive import REDRIVE_HEADER, RedriveFilter, redrive
from worker.service import run_worker
from worker.simulator import catalog_id

SEED = 9


async def test_redrive_not_found_after_the_cause_is_fixed(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    api = await start_simulator(seed=SEED, catalog_size=20)  # ids 20.. are unknown for now
    known = [catalog_id(SEED, i) for i in range(20)]
    late = [catalog_id(SEED, i) for i in range(20, 30)]
    late_json = [
        orjson.dumps({"investigate_id": i, "context": {"n": n}}) for n, i in enumerate(late)
    ]
    await produce(bootstrap, topics.input, [*(i.encode() for i in known), *late_json, b"   "])
    settings = make_settings(bootstrap, topics, api.base_url)

    first = await run_worker(settings, burst=True)
    assert (first.produced, first.dlq) == (20, 11)

    dry = await redrive(settings, RedriveFilter(reasons=["not_found"]), dry_run=True)
    assert (dry.read, dry.matched, dry.published) == (11, 10, 0)
    assert dry.reasons == {"not_found": 10, "empty": 1}  # what a reason that matches none lists

    # The ids exist now (e.g. Cloudflare had not indexed them yet): redrive only those.
    api.sim.config = dataclasses.replace(api.sim.config, catalog_size=30)
    done = await redrive(settings, RedriveFilter(reasons=["not_found"]))
    assert (done.matched, done.published, done.unreadable) == (10, 10, 0)

    inputs = await read_all(bootstrap, topics.input, 41)
    redriven = [r for r in inputs if r.headers]
    assert sorted(r.value for r in redriven) == sorted(late_json)  # byte for byte
    assert all(dict(r.headers)[REDRIVE_HEADER].startswith(topics.dlq.encode()) for r in redriven)

    second = await run_worker(settings, burst=True)
    assert (second.consumed, second.produced, second.dlq) == (10, 10, 0)
    events = [orjson.loads(r.value) for r in await read_all(bootstrap, topics.output, 30)]
    by_id = {e["investigate_id"]: e for e in events}
    assert sorted(by_id) == sorted(known + late)
    assert by_id[late[3]]["context"] == {"n": 3}  # the original message, context and all
