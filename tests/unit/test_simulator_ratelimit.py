"""The simulator's rate limit, on a fake clock: budget, lockout, headers, counters.

Cloudflare allows N calls per window; the call that exceeds it blocks *every* call for the
lockout with 429 / code 971 and ``retry-after``; calls during the block neither count nor
extend it. ``Ratelimit`` / ``Ratelimit-Policy`` describe the budget on every answer.
"""

from __future__ import annotations

import dataclasses

import orjson

from tests.unit.conftest import FakeClock
from tests.unit.simcalls import detections_call
from worker.cloudflare.answers import parse_ratelimit
from worker.httpserver import Request, Response
from worker.simulator import API_PREFIX, DEFAULT_TOKEN, Simulator, SimulatorConfig, catalog_id
from worker.simulator.ratelimit import RateLimiter

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
KNOWN = catalog_id(1, 0)


def detections(investigate_id: str = KNOWN, *, token: str = DEFAULT_TOKEN) -> Request:
    return detections_call(investigate_id, token=token)


def header(response: Response, name: str) -> str | None:
    return next((v for k, v in response.headers if k == name), None)


def limiter(clock: FakeClock, **kwargs: float) -> RateLimiter:
    options: dict[str, float] = {"limit": 3, "window_s": 10, "lockout_s": 30, **kwargs}
    return RateLimiter(
        limit=int(options["limit"]),
        window_s=options["window_s"],
        lockout_s=options["lockout_s"],
        clock=clock,
    )


# --- the limiter --------------------------------------------------------------------------


def test_budget_then_lockout_from_the_call_that_exceeds(clock: FakeClock) -> None:
    rl = limiter(clock)
    assert [rl.check().allowed for _ in range(3)] == [True, True, True]
    fourth = rl.check()
    assert not fourth.allowed
    assert fourth.started_lockout
    assert dict(fourth.headers)["retry-after"] == "30"
    assert rl.blocked_until == 30


def test_calls_during_the_lockout_are_refused_and_do_not_extend_it(clock: FakeClock) -> None:
    rl = limiter(clock)
    for _ in range(4):
        rl.check()
    retry_afters = []
    for step in range(29):
        clock.now = 0.5 + step  # every second of the block
        verdict = rl.check()
        assert not verdict.allowed
        assert not verdict.started_lockout
        retry_afters.append(int(dict(verdict.headers)["retry-after"]))
    assert rl.blocked_until == 30  # unchanged by 29 refused calls
    assert retry_afters == [30 - s for s in range(29)]  # seconds left, rounded up
    clock.now = 30
    # The block is over and the budget is full again.
    assert [rl.check().allowed for _ in range(3)] == [True, True, True]
    assert not rl.check().allowed


def test_the_window_slides(clock: FakeClock) -> None:
    rl = limiter(clock, limit=2, window_s=10)
    assert rl.check().allowed  # t=0
    clock.now = 6
    assert rl.check().allowed  # t=6
    clock.now = 9.9
    assert not rl.check().allowed  # 2 calls in (-0.1, 9.9]: this one exceeds
    rl.reset()
    assert rl.check().allowed  # t=9.9
    clock.now = 19.8
    assert rl.check().allowed  # t=9.9 is still inside (9.8, 19.8]
    clock.now = 19.95
    assert rl.check().allowed  # t=9.9 left the window: room for one more
    assert not rl.check().allowed


def test_ratelimit_headers_count_down(clock: FakeClock) -> None:
    rl = limiter(clock, limit=3, window_s=10)
    first = dict(rl.check().headers)
    assert first["ratelimit"] == '"default";r=2;t=10'
    assert first["ratelimit-policy"] == '"burst";q=3;w=10'
    assert "retry-after" not in first  # only when limited
    clock.now = 4.2
    second = dict(rl.check().headers)
    assert second["ratelimit"] == '"default";r=1;t=6'  # the t=0 call frees its slot at 10
    # The worker's own parser reads what the simulator writes.
    assert parse_ratelimit(second["ratelimit"]) == (1, 6.0)


def test_a_zero_limit_turns_it_off(clock: FakeClock) -> None:
    rl = limiter(clock, limit=0)
    assert all(rl.check().allowed for _ in range(10_000))
    assert rl.check().headers == ()


def test_fractional_waits_round_up(clock: FakeClock) -> None:
    rl = limiter(clock, limit=1, lockout_s=2.2)
    rl.check()
    assert dict(rl.check().headers)["retry-after"] == "3"
    clock.now = 2.1
    assert dict(rl.check().headers)["retry-after"] == "1"


# --- through the simulator ----------------------------------------------------------------


def simulator(clock: FakeClock, **config: object) -> Simulator:
    options: dict[str, object] = {"rate_limit": 5, "rate_window_s": 2.0, "lockout_s": 3.0}
    options.update(config)
    return Simulator(SimulatorConfig(**options), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


async def test_lockout_answers_429_971_for_every_call_until_it_ends(clock: FakeClock) -> None:
    sim = simulator(clock)
    for _ in range(5):
        assert (await sim(detections())).status == 200
    refused = []
    for step in range(6):  # every half second of the 3 s block, with any id or token
        clock.now = 0.5 * step
        refused.append(await sim(detections(catalog_id(1, step), token="whatever")))
    for response in refused:
        assert response.status == 429
        doc = orjson.loads(response.body)
        # Cloudflare's envelope, with code 971: below the schema's "minimum: 1000" for error
        # codes, which the real API does not honour either.
        assert doc == {
            "result": None,
            "success": False,
            "errors": [{"code": 971, "message": doc["errors"][0]["message"]}],
            "messages": [],
        }
        assert header(response, "retry-after") is not None
    assert [header(r, "retry-after") for r in refused] == ["3", "3", "2", "2", "1", "1"]
    stats = sim.stats()
    assert stats["lockouts_triggered"] == 1
    assert stats["rate_limited_total"] == 6
    assert stats["locked_out"] is True
    clock.now = 3.0
    after = await sim(detections())
    assert after.status == 200
    assert header(after, "ratelimit") == '"default";r=4;t=2'
    assert sim.stats()["locked_out"] is False
    assert sim.stats()["requests_by_status"] == {"200": 6, "429": 6}


async def test_every_answer_carries_the_budget_headers(clock: FakeClock) -> None:
    sim = simulator(clock, rate_limit=1200, rate_window_s=300)
    ok = await sim(detections())
    unknown = await sim(detections("no-such-id"))
    refused = await sim(detections(token="wrong"))
    for response, remaining in ((ok, 1199), (unknown, 1198), (refused, 1197)):
        assert header(response, "ratelimit") == f'"default";r={remaining};t=300'
        assert header(response, "ratelimit-policy") == '"burst";q=1200;w=300'
        assert header(response, "retry-after") is None


async def test_headers_can_be_turned_off(clock: FakeClock) -> None:
    sim = simulator(clock, rate_limit=1, ratelimit_headers=False)
    assert (await sim(detections())).headers == []
    refused = await sim(detections())
    assert refused.status == 429
    assert refused.headers == [("retry-after", "3")]  # still sent: it is the 429's meaning


async def test_stats_and_reset_are_not_rate_limited(clock: FakeClock) -> None:
    sim = simulator(clock, rate_limit=1)
    await sim(detections())
    admin = Request("GET", "/__simulator/stats", "/__simulator/stats", {}, {})
    for _ in range(10):
        assert (await sim(admin)).status == 200
    assert (await sim(detections())).status == 429
    reset = Request("POST", "/__simulator/reset", "/__simulator/reset", {}, {})
    stats = orjson.loads((await sim(reset)).body)
    assert stats["requests_total"] == 0
    assert stats["lockouts_triggered"] == 0
    assert (await sim(detections())).status == 200  # the lockout is gone too


async def test_the_limit_counts_every_api_call_whatever_its_answer(clock: FakeClock) -> None:
    sim = simulator(clock, rate_limit=3)
    unknown_route = Request("GET", f"{API_PREFIX}/zones", f"{API_PREFIX}/zones", {}, {})
    assert (await sim(unknown_route)).status == 404
    assert (await sim(detections(token="wrong"))).status == 403
    assert (await sim(detections("unknown"))).status == 404
    assert (await sim(detections())).status == 429


async def test_config_can_change_while_serving(clock: FakeClock) -> None:
    sim = simulator(clock, rate_limit=2)
    await sim(detections())
    sim.config = dataclasses.replace(sim.config, rate_limit=3)
    # The call already counted stays counted under the new limit.
    assert header(await sim(detections()), "ratelimit") == '"default";r=1;t=2'
    assert header(await sim(detections()), "ratelimit") == '"default";r=0;t=2'
    assert (await sim(detections())).status == 429
