"""worker.simulator: the stand-in Cloudflare API, called directly as a request handler.

No sockets: Request objects go straight into Simulator.__call__. Covers deterministic
payloads per (seed, id), the catalog (known ids answer 200, others the 7003 envelope with
the configured status), auth (Bearer, legacy email + key, wrong and malformed headers),
and schema conformance: every 200 body is validated against the published schema of its
shape (2026 or 2025) and every error body against the 4XX schema.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from tests.unit.schema import (
    PATH_2025,
    SCHEMA_4XX,
    SCHEMA_2025,
    SCHEMA_2026,
    SPEC,
    openapi_to_jsonschema,
    validator,
)
from tests.unit.simcalls import detections_call
from worker.cloudflare.answers import parse_answer
from worker.httpserver import Request, Response
from worker.simulator import DEFAULT_TOKEN, Simulator, SimulatorConfig, catalog_id
from worker.simulator.app import hash_fraction

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
BEARER = {"authorization": f"Bearer {DEFAULT_TOKEN}"}
N_IDS = 300

# The OpenAPI -> JSON Schema helper and the validators live in tests/unit/schema.py.


def test_nullable_helper() -> None:
    nullable_enum = {
        "allOf": [{"type": "string", "enum": ["a"]}, {"type": "string", "nullable": True}]
    }
    schema = validator(
        openapi_to_jsonschema(
            {
                "type": "object",
                "properties": {
                    "s": {"type": "string", "nullable": True},
                    "e": {"type": "string", "enum": ["x"], "nullable": True},
                    "n": nullable_enum,
                    "plain": {"type": "string"},
                },
            }
        )
    )
    assert schema.is_valid({"s": None, "e": None, "n": None, "plain": "p"})
    assert schema.is_valid({"s": "s", "e": "x", "n": "a"})
    assert not schema.is_valid({"plain": None})
    assert not schema.is_valid({"e": "y"})
    assert not schema.is_valid({"n": "b"})


def test_schemas_reject_what_they_should() -> None:
    good_2026 = {"success": True, "errors": [], "messages": [], "result": {}}
    assert not SCHEMA_2026.is_valid(good_2026)  # required result fields missing
    body_2025 = SPEC["previous_2025"]["paths"][PATH_2025]["get"]["responses"]["200"]
    example = body_2025["content"]["application/json"]["schema"]["allOf"][1]["properties"]
    envelope = {"success": True, "errors": [], "messages": []}
    assert SCHEMA_2025.is_valid({**envelope, "result": example["result"]["example"]})
    bad = copy.deepcopy(example["result"]["example"])
    bad["validation"]["spf"] = "softfail"
    assert not SCHEMA_2025.is_valid({**envelope, "result": bad})
    assert not SCHEMA_4XX.is_valid({"success": False, "errors": [], "messages": [], "result": None})


# --- calling the handler --------------------------------------------------------------------


request = detections_call


async def answer(simulator: Simulator, req: Request) -> tuple[int, dict[str, Any]]:
    response: Response = await simulator(req)
    assert response.content_type == "application/json"
    return response.status, orjson.loads(response.body)


def assert_error(status: int, doc: dict[str, Any], want_status: int, code: int) -> None:
    assert status == want_status
    SCHEMA_4XX.validate(doc)
    assert doc["success"] is False
    assert doc["result"] is None
    assert doc["errors"][0]["code"] == code


def is_2025(config: SimulatorConfig, investigate_id: str) -> bool:
    return hash_fraction(config.seed, investigate_id) < config.shape_2025_ratio


async def test_every_catalog_answer_matches_the_schema_of_its_shape() -> None:
    config = SimulatorConfig(seed=1)
    simulator = Simulator(config)
    shapes = {"2025": 0, "2026": 0}
    for index in range(N_IDS):
        investigate_id = catalog_id(config.seed, index)
        status, doc = await answer(simulator, request(investigate_id))
        assert status == 200
        result = doc["result"]
        if is_2025(config, investigate_id):
            shapes["2025"] += 1
            SCHEMA_2025.validate(doc)
            assert "findings" not in result
            assert all("filename" not in a and "sha256" not in a for a in result["attachments"])
        else:
            shapes["2026"] += 1
            SCHEMA_2026.validate(doc)
            assert "findings" in result
        # ...and the worker's own parser accepts it.
        detections = parse_answer(200, {}, orjson.dumps(doc), default_retry_after_s=1)
        assert detections.action == result["action"]
    # Both shapes really occur (the default ratio is 20% of ids in the 2025 shape).
    assert 0.1 * N_IDS < shapes["2025"] < 0.3 * N_IDS
    assert simulator.stats()["requests_by_status"] == {"200": N_IDS}
    assert simulator.stats()["unique_ids_answered"] == N_IDS


async def test_2025_shape_has_the_older_nulls() -> None:
    config = SimulatorConfig(seed=3, shape_2025_ratio=1.0)
    simulator = Simulator(config)
    null_dispositions = null_validations = 0
    for index in range(N_IDS):
        _, doc = await answer(simulator, request(catalog_id(config.seed, index)))
        result = doc["result"]
        SCHEMA_2025.validate(doc)
        null_dispositions += result["final_disposition"] is None
        null_validations += None in (result["validation"][k] for k in ("spf", "dkim", "dmarc"))
    assert null_dispositions > 0
    assert null_validations > 0


async def test_payloads_are_deterministic_per_id_and_seed() -> None:
    ids = [catalog_id(5, i) for i in range(40)]
    first, second = Simulator(SimulatorConfig(seed=5)), Simulator(SimulatorConfig(seed=5))
    for investigate_id in ids:
        a = await first(request(investigate_id))
        b = await second(request(investigate_id))
        assert a.status == 200
        assert a.body == b.body


async def test_other_seed_gives_other_payloads() -> None:
    one = Simulator(SimulatorConfig(seed=1, accept_any_id=True))
    two = Simulator(SimulatorConfig(seed=2, accept_any_id=True))
    ids = [f"any-id-{i}" for i in range(20)]
    differing = 0
    for investigate_id in ids:
        a, b = await one(request(investigate_id)), await two(request(investigate_id))
        differing += a.body != b.body
    assert differing >= 18


def test_catalog_ids_are_stable_and_seed_specific() -> None:
    assert catalog_id(1, 0) == catalog_id(1, 0)
    assert catalog_id(1, 0) != catalog_id(2, 0)
    assert len({catalog_id(1, i) for i in range(1000)}) == 1000
    assert catalog_id(1, 12).endswith("-00000012")


@pytest.mark.parametrize("unknown_status", [404, 400])
async def test_unknown_ids_get_the_7003_envelope(unknown_status: int) -> None:
    config = SimulatorConfig(seed=1, catalog_size=100, unknown_status=unknown_status)
    simulator = Simulator(config)
    unknown = [
        catalog_id(2, 0),  # another seed's id
        catalog_id(1, 100),  # just past the catalog
        catalog_id(1, 5)[:-1] + "9",  # a tampered index
        "47JJcT1w6GztQV7-email@example.com",
        "not-an-id",
    ]
    for investigate_id in unknown:
        status, doc = await answer(simulator, request(investigate_id))
        assert_error(status, doc, unknown_status, 7003)
    status, _ = await answer(simulator, request(catalog_id(1, 99)))
    assert status == 200
    assert simulator.stats()["requests_by_status"] == {str(unknown_status): 5, "200": 1}


async def test_error_bodies_for_many_ids_match_the_4xx_schema() -> None:
    simulator = Simulator(SimulatorConfig(seed=1, catalog_size=0))
    for index in range(N_IDS):
        status, doc = await answer(simulator, request(catalog_id(1, index)))
        assert_error(status, doc, 404, 7003)


async def test_accept_any_id() -> None:
    simulator = Simulator(SimulatorConfig(accept_any_id=True))
    status, doc = await answer(simulator, request("47JJcT1w6GztQV7-email@example.com"))
    assert status == 200
    assert doc["success"] is True


# --- auth -----------------------------------------------------------------------------------

KNOWN = catalog_id(1, 0)
LEGACY = SimulatorConfig(auth_email="soc@example.com", auth_key="global-key")


async def test_bearer_good() -> None:
    status, _ = await answer(Simulator(SimulatorConfig()), request(KNOWN, BEARER))
    assert status == 200


@pytest.mark.parametrize("token", ["wrong", DEFAULT_TOKEN + "x", DEFAULT_TOKEN.upper()])
async def test_bearer_wrong_token(token: str) -> None:
    simulator = Simulator(SimulatorConfig())
    status, doc = await answer(simulator, request(KNOWN, {"authorization": f"Bearer {token}"}))
    assert_error(status, doc, 403, 10000)


@pytest.mark.parametrize(
    "authorization", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer    ", DEFAULT_TOKEN, ""]
)
async def test_malformed_authorization(authorization: str) -> None:
    simulator = Simulator(SimulatorConfig())
    status, doc = await answer(simulator, request(KNOWN, {"authorization": authorization}))
    assert_error(status, doc, 400, 6003)
    assert doc["errors"][0]["error_chain"][0]["code"] == 6111


async def test_no_auth_headers() -> None:
    status, doc = await answer(Simulator(SimulatorConfig()), request(KNOWN, {}))
    assert_error(status, doc, 400, 6003)
    assert doc["errors"][0]["error_chain"][0]["code"] == 6103


async def test_legacy_email_and_key() -> None:
    headers = {"x-auth-email": "soc@example.com", "x-auth-key": "global-key"}
    status, _ = await answer(Simulator(LEGACY), request(KNOWN, headers))
    assert status == 200


@pytest.mark.parametrize(
    ("headers", "want_status", "chain"),
    [
        ({"x-auth-email": "soc@example.com", "x-auth-key": "wrong"}, 403, None),
        ({"x-auth-email": "other@example.com", "x-auth-key": "global-key"}, 403, None),
        ({"x-auth-email": "soc@example.com"}, 400, 6102),
        ({"x-auth-key": "global-key"}, 400, 6102),
        ({"x-auth-email": "not-an-email", "x-auth-key": "global-key"}, 400, 6102),
    ],
)
async def test_legacy_refused(headers: dict[str, str], want_status: int, chain: int | None) -> None:
    status, doc = await answer(Simulator(LEGACY), request(KNOWN, headers))
    assert_error(status, doc, want_status, 10000 if want_status == 403 else 6003)
    if chain is not None:
        assert doc["errors"][0]["error_chain"][0]["code"] == chain


async def test_legacy_pair_refused_when_not_configured() -> None:
    headers = {"x-auth-email": "soc@example.com", "x-auth-key": "global-key"}
    status, doc = await answer(Simulator(SimulatorConfig()), request(KNOWN, headers))
    assert_error(status, doc, 403, 10000)


# --- routing --------------------------------------------------------------------------------


async def test_bad_account_id_is_400_7003() -> None:
    status, doc = await answer(Simulator(SimulatorConfig()), request(KNOWN, account="ABC"))
    assert_error(status, doc, 400, 7003)


@pytest.mark.parametrize(
    "raw_path",
    [
        "/client/v4/accounts",
        f"/client/v4/accounts/{ACCOUNT}/email-security/investigate/{KNOWN}",
        f"/client/v4/accounts/{ACCOUNT}/email-security/investigate/a/b/detections",
        f"/client/v3/accounts/{ACCOUNT}/email-security/investigate/{KNOWN}/detections",
        f"/client/v4/accounts/{ACCOUNT}/email-security/other/{KNOWN}/detections",
    ],
)
async def test_unknown_routes_are_404_7003(raw_path: str) -> None:
    status, doc = await answer(Simulator(SimulatorConfig()), request("", raw_path=raw_path))
    assert_error(status, doc, 404, 7003)


async def test_method_not_allowed() -> None:
    status, doc = await answer(Simulator(SimulatorConfig()), request(KNOWN, method="POST"))
    assert_error(status, doc, 405, 7001)


async def test_latency_uses_the_injected_sleep() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    config = SimulatorConfig(latency_s=0.25, latency_by_id={KNOWN: 2.0})
    simulator = Simulator(config, sleep=sleep)
    await simulator(request(KNOWN))
    await simulator(request(catalog_id(1, 1)))
    assert slept == [2.0, 0.25]


async def test_stats_endpoint_is_not_counted() -> None:
    simulator = Simulator(SimulatorConfig())
    await simulator(request(KNOWN))
    response = await simulator(request("", raw_path="/__simulator/stats"))
    stats = orjson.loads(response.body)
    assert stats == {
        "requests_total": 1,
        "requests_by_status": {"200": 1},
        "requests_by_route": {"detections": 1},
        "rate_limited_total": 0,
        "lockouts_triggered": 0,
        "locked_out": False,
        "faults_by_kind": {},
        "unique_ids_answered": 1,
    }
