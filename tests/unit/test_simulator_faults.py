"""The simulator's faults and latency, called as a handler (no sockets, fake clock).

Faults by rate are seeded draws (same seed, same sequence, expected counts); faults by id
hit every call or the first N; each kind has its answer (JSON or HTML 5xx, reset, reset on
a reused connection, a slow answer, a truncated body). Latency follows its distribution.
The wire behaviour of reset and truncate is proven over real HTTP in
tests/integration/test_simulator_http.py.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

import orjson
import pytest

from tests.unit.conftest import FakeClock
from tests.unit.simcalls import detections_call
from worker.errors import ConfigError
from worker.httpserver import Connection, Response
from worker.simulator import (
    FAULT_KINDS,
    Simulator,
    SimulatorConfig,
    catalog_id,
)

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
IDS = [catalog_id(1, i) for i in range(50)]


call = detections_call


def make(clock: FakeClock, **config: Any) -> Simulator:
    return Simulator(SimulatorConfig(**config), clock=clock, sleep=clock.sleep)


def header(response: Response, name: str) -> str | None:
    return next((v for k, v in response.headers if k == name), None)


def kind_of(response: Response) -> str:
    """Which fault (or none) a response shows."""
    if response.fault is not None:
        return response.fault
    if response.content_type.startswith("text/html"):
        return f"html_{response.status}"
    if response.status >= 500:
        return f"json_{response.status}"
    return str(response.status)


# --- by rate ------------------------------------------------------------------------------


async def test_rates_give_the_expected_counts_and_the_same_sequence_per_seed(
    clock: FakeClock,
) -> None:
    rates = {"json_503": 0.1, "html_522": 0.05, "reset": 0.05, "truncate": 0.05}

    async def run(seed: int) -> tuple[list[str], Simulator]:
        sim = make(clock, seed=seed, fault_rates=rates, rate_limit=0, accept_any_id=True)
        return [kind_of(await sim(call(IDS[i % 50]))) for i in range(4000)], sim

    first, sim = await run(7)
    assert (await run(7))[0] == first  # deterministic for a seed
    assert (await run(8))[0] != first
    counts = Counter(first)
    for kind, rate in rates.items():
        assert abs(counts[kind] - 4000 * rate) < 4000 * rate * 0.25, (kind, counts)
    assert counts["200"] == 4000 - sum(counts[kind] for kind in rates)
    assert sim.stats()["faults_by_kind"] == {kind: counts[kind] for kind in sorted(rates)}


async def test_a_reset_is_drawn_before_auth_and_counted(clock: FakeClock) -> None:
    sim = make(clock, fault_rates={"reset": 1.0})
    assert (await sim(call(IDS[0], token="wrong"))).fault == "reset"
    assert sim.stats()["requests_by_status"] == {"reset": 1}
    assert sim.stats()["faults_by_kind"] == {"reset": 1}


# --- by id --------------------------------------------------------------------------------


async def test_by_id_every_call_or_the_first_n(clock: FakeClock) -> None:
    sim = make(clock, fault_by_id={IDS[0]: "json_500", IDS[1]: "html_524*2"})
    assert [kind_of(await sim(call(IDS[0]))) for _ in range(3)] == ["json_500"] * 3
    assert [kind_of(await sim(call(IDS[1]))) for _ in range(4)] == [
        "html_524",
        "html_524",
        "200",
        "200",
    ]
    assert kind_of(await sim(call(IDS[2]))) == "200"
    # /__simulator/reset restores the counts.
    sim.reset()
    assert kind_of(await sim(call(IDS[1]))) == "html_524"


@pytest.mark.parametrize("spec", ["nope", "reset*0", "reset*x", "json_501"])
def test_bad_fault_specs_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="fault"):
        SimulatorConfig(fault_by_id={"x": spec})


def test_rates_must_be_known_and_add_up_to_at_most_one() -> None:
    with pytest.raises(ConfigError, match="unknown fault kind"):
        SimulatorConfig(fault_rates={"json_501": 0.1})
    with pytest.raises(ConfigError, match="add up"):
        SimulatorConfig(fault_rates={"reset": 0.6, "timeout": 0.6})
    SimulatorConfig(fault_rates=dict.fromkeys(FAULT_KINDS, 1 / len(FAULT_KINDS)))


# --- what each kind answers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status"), [("json_500", 500), ("json_502", 502), ("json_503", 503)]
)
async def test_json_5xx_is_cloudflares_envelope(clock: FakeClock, kind: str, status: int) -> None:
    sim = make(clock, fault_by_id={IDS[0]: kind}, x_should_retry="false")
    response = await sim(call(IDS[0]))
    assert response.status == status
    assert response.content_type == "application/json"
    doc = orjson.loads(response.body)
    assert doc["success"] is False
    assert doc["result"] is None
    assert doc["errors"][0]["code"] >= 1000
    assert header(response, "x-should-retry") == "false"
    assert header(response, "ratelimit") is not None


@pytest.mark.parametrize("status", [502, 520, 521, 522, 523, 524])
async def test_html_5xx_is_an_edge_error_page(clock: FakeClock, status: int) -> None:
    sim = make(clock, fault_by_id={IDS[0]: f"html_{status}"}, x_should_retry="true")
    response = await sim(call(IDS[0]))
    assert response.status == status
    assert response.content_type.startswith("text/html")
    page = response.body.decode()
    assert page.startswith("<!DOCTYPE html>")
    assert f"Error code {status}" in page
    ray = header(response, "cf-ray")
    assert ray is not None
    assert ray in page
    assert header(response, "server") == "cloudflare"
    assert header(response, "x-should-retry") == "true"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.body)


async def test_no_x_should_retry_unless_configured(clock: FakeClock) -> None:
    sim = make(clock, fault_by_id={IDS[0]: "json_503"})
    assert header(await sim(call(IDS[0])), "x-should-retry") is None


async def test_truncate_is_the_normal_answer_marked_to_be_cut(clock: FakeClock) -> None:
    sim = make(clock, fault_by_id={IDS[0]: "truncate"})
    response = await sim(call(IDS[0]))
    assert response.fault == "truncate"
    assert response.status == 200
    assert orjson.loads(response.body)["success"] is True
    assert sim.stats()["requests_by_status"] == {"truncate": 1}
    assert sim.stats()["unique_ids_answered"] == 0  # a cut answer does not count as answered


async def test_timeout_waits_slow_s_on_the_injected_clock(clock: FakeClock) -> None:
    sim = make(clock, fault_by_id={IDS[0]: "timeout"}, slow_s=45.0, latency_s=0.01)
    response = await sim(call(IDS[0]))
    assert response.status == 200
    assert clock.sleeps == [45.0]
    await sim(call(IDS[1]))
    assert clock.sleeps == [45.0, 0.01]


async def test_reset_reused_answers_a_fresh_connection_then_kills_its_next_request(
    clock: FakeClock,
) -> None:
    sim = make(clock, fault_by_id={IDS[0]: "reset_reused*1"})
    connection = Connection()
    first = await sim(call(IDS[0], sequence=1, connection=connection))
    assert first.status == 200
    assert first.fault is None
    # Whatever the next request on that connection is, it is aborted unanswered.
    second = await sim(call(IDS[5], sequence=2, connection=connection))
    assert second.fault == "reset"
    # Other connections are not affected.
    assert (await sim(call(IDS[5], connection=Connection()))).status == 200
    assert sim.stats()["requests_by_status"] == {"200": 2, "reset": 1}
    assert sim.stats()["faults_by_kind"] == {"reset_reused": 1}


async def test_reset_reused_on_an_already_reused_connection_aborts_at_once(
    clock: FakeClock,
) -> None:
    sim = make(clock, fault_by_id={IDS[0]: "reset_reused"})
    response = await sim(call(IDS[0], sequence=3, connection=Connection()))
    assert response.fault == "reset"


# --- latency ------------------------------------------------------------------------------


async def delays(sim: Simulator, clock: FakeClock, n: int) -> list[float]:
    start = len(clock.sleeps)
    for i in range(n):
        await sim(call(IDS[i % 50]))
    return clock.sleeps[start:]


async def test_fixed_latency(clock: FakeClock) -> None:
    sim = make(clock, latency_s=0.2, rate_limit=0)
    assert await delays(sim, clock, 20) == [0.2] * 20


async def test_uniform_latency_stays_in_bounds(clock: FakeClock) -> None:
    sim = make(clock, latency_s=0.1, latency_max_s=0.3, latency_dist="uniform", rate_limit=0)
    values = await delays(sim, clock, 2000)
    assert min(values) >= 0.1
    assert max(values) <= 0.3
    assert statistics.mean(values) == pytest.approx(0.2, abs=0.01)


async def test_longtail_latency_has_its_median_and_a_long_tail(clock: FakeClock) -> None:
    config = {"latency_s": 0.05, "latency_dist": "longtail", "latency_sigma": 1.0}
    sim = make(clock, rate_limit=0, **config)
    values = sorted(await delays(sim, clock, 4000))
    assert statistics.median(values) == pytest.approx(0.05, rel=0.1)
    assert values[int(0.99 * len(values))] > 0.05 * 6  # p99 near 10x the median
    again = make(clock, rate_limit=0, **config)
    assert sorted(await delays(again, clock, 4000)) == values  # seeded
    capped = make(clock, rate_limit=0, latency_max_s=0.2, **config)
    assert max(await delays(capped, clock, 4000)) == 0.2


async def test_zero_latency_answers_without_a_coroutine(clock: FakeClock) -> None:
    """The fast path: a ready Response, so the server needs no task per request."""
    sim = make(clock)
    assert isinstance(sim(call(IDS[0])), Response)
    slow = make(clock, latency_s=0.1)
    pending = slow(call(IDS[0]))
    assert not isinstance(pending, Response)
    assert (await pending).status == 200
