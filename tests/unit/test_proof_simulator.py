"""Every simulator answer fits the published schema, and the official SDK reads every 200.

The simulator is driven in-process (``Simulator.__call__`` with ``Request`` objects) for 20
seeds x 200 catalogue ids, with the 2025 shape for none, all, or a share of the ids. Each
200 body validates against the schema of its shape (a 2025 body has no ``findings`` key;
the 2026 schema requires one), the SDK parses it into ``DetectionGetResponse`` in its
default and in its strict (validating) mode, and the worker's event agrees with the SDK's
parse field by field. Every JSON error body the simulator can produce (unknown id with
either status, malformed and wrong credentials, bad account, unknown route, wrong method,
the JSON 500/502/503 faults and the rate limit's 429) validates against
``detections_4XX_body``, but for one documented gap: the schema's ``minimum: 1000`` on
error codes, which Cloudflare's own 429 code 971 breaks. HTML error pages (the 52x
faults) are not JSON and not checked.

Also here: the SDK helpers of tests/unit/schema.py return exactly what the SDK's own
``detections.get()`` returns, and the SDK's gaps against the schema, pinned precisely.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import cloudflare
import httpx
import jsonschema
import orjson
import pydantic
import pytest
from cloudflare.types.email_security.investigate import detection_get_response as sdk_types

from tests.unit.schema import (
    ACCOUNT,
    BODY_2025,
    BODY_2026,
    SCHEMA_4XX,
    SCHEMA_2025,
    SCHEMA_2026,
    assert_same_json,
    content_of,
    expected_content,
    sdk_client,
    sdk_parse,
)
from tests.unit.simcalls import detections_call
from worker.cloudflare.answers import parse_answer
from worker.cloudflare.models import DISPOSITIONS, VALIDATION_RESULTS
from worker.errors import ApiError, NotFoundError
from worker.events import build_event
from worker.httpserver import Request, Response
from worker.inputs import EnrichRequest
from worker.simulator import DEFAULT_TOKEN, Simulator, SimulatorConfig, catalog_id

SEEDS = range(1, 21)
IDS_PER_SEED = 200
RATIOS = (0.0, 1.0, 0.2, 0.5)  # share of ids in the 2025 shape, by seed
REAL_CLIENT_EVERY = 25  # every 25th answer also goes through the SDK's detections.get()
BEARER = {"authorization": f"Bearer {DEFAULT_TOKEN}"}


request = detections_call


def sdk_get(body: bytes, *, strict: bool = False) -> sdk_types.DetectionGetResponse:
    """The SDK's own ``detections.get()``, answered with ``body`` by a mock transport."""

    def answer(req: httpx.Request) -> httpx.Response:
        assert req.url.path.endswith("/investigate/some-id/detections")
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    client = sdk_client(strict=strict, transport=httpx.MockTransport(answer))
    with client:
        return client.email_security.investigate.detections.get("some-id", account_id=ACCOUNT)


# --- 200 answers ------------------------------------------------------------------------------


async def test_every_simulator_200_fits_its_schema_and_the_sdk() -> None:
    shapes = {"2025": 0, "2026": 0}
    via_client = 0
    enrich = EnrichRequest("placeholder", ACCOUNT, None)
    unknown: list[tuple[str, str]] = []

    def report_unknown(field: str, value: str) -> None:
        unknown.append((field, value))

    for seed in SEEDS:
        ratio = RATIOS[seed % len(RATIOS)]
        simulator = Simulator(SimulatorConfig(seed=seed, shape_2025_ratio=ratio))
        seed_shapes = {"2025": 0, "2026": 0}
        for index in range(IDS_PER_SEED):
            investigate_id = catalog_id(seed, index)
            response: Response = await simulator(request(investigate_id))
            assert response.status == 200, (seed, investigate_id, response.body[:200])
            assert response.content_type == "application/json"
            doc = orjson.loads(response.body)
            result = doc["result"]
            if "findings" in result:
                seed_shapes["2026"] += 1
                SCHEMA_2026.validate(doc)
            else:
                seed_shapes["2025"] += 1
                SCHEMA_2025.validate(doc)
                assert not any(
                    {"filename", "md5", "sha1", "sha256"} & a.keys() for a in result["attachments"]
                )
            loose = sdk_parse(response.body)
            strict = sdk_parse(response.body, strict=True)  # the SDK's types accept it
            expected = expected_content(loose)
            if index % REAL_CLIENT_EVERY == 0:
                assert sdk_get(response.body) == loose
                assert sdk_get(response.body, strict=True) == strict
                via_client += 1
            detections = parse_answer(200, {}, response.body, default_retry_after_s=300)
            event = build_event(detections, enrich, None, on_unknown=report_unknown)
            assert unknown == []
            assert_same_json(content_of(event), expected)
        if ratio == 0.0:
            assert seed_shapes["2025"] == 0
        if ratio == 1.0:
            assert seed_shapes["2026"] == 0
        shapes["2025"] += seed_shapes["2025"]
        shapes["2026"] += seed_shapes["2026"]
    assert sum(shapes.values()) == len(SEEDS) * IDS_PER_SEED
    assert min(shapes.values()) > 1000
    assert via_client == len(SEEDS) * IDS_PER_SEED // REAL_CLIENT_EVERY


def test_sdk_helper_is_the_sdk_client_path() -> None:
    """sdk_parse (tests/unit/schema.py) returns what detections.get() returns, both modes."""
    body = orjson.dumps(
        {
            "result": {
                "action": "QUARANTINED",
                "attachments": [{"size": 3, "detection": None, "score_extra": 1}],
                "findings": [{"score": 7}],
                "headers": [{"name": "From", "value": "a@example.com"}],
                "links": [],
                "sender_info": {"as_number": 64500},
                "threat_categories": [],
                "validation": {"spf": "pass"},
                "new_key": {"x": 1},
            },
            "success": True,
            "errors": [{"code": 1000, "message": "m"}],
            "messages": [],
        }
    )
    for strict in (False, True):
        via_client = sdk_get(body, strict=strict)
        assert sdk_parse(body, strict=strict) == via_client
        assert via_client.findings is not None
        assert via_client.findings[0].score == 7.0
        assert isinstance(via_client.findings[0].score, float)
        assert via_client.model_extra == {"new_key": {"x": 1}}


# --- error answers ----------------------------------------------------------------------------

KNOWN = catalog_id(1, 0)
LEGACY = {"x-auth-email": "soc@example.com", "x-auth-key": "global-key"}


ErrorCase = tuple[str, SimulatorConfig, list[Request], int]


def _error_cases() -> list[ErrorCase]:
    """(what, config, requests, status of the last answer) for every JSON error body."""
    legacy = SimulatorConfig(auth_email="soc@example.com", auth_key="global-key")
    cases: list[tuple[str, SimulatorConfig, Request, int]] = [
        ("unknown id, 404", SimulatorConfig(catalog_size=10), request(KNOWN[:-1] + "9"), 404),
        (
            "unknown id, 400",
            SimulatorConfig(catalog_size=10, unknown_status=400),
            request("47JJcT1w6GztQV7-email@example.com"),
            400,
        ),
        ("another seed's id", SimulatorConfig(seed=1), request(catalog_id(2, 0)), 404),
        ("wrong token", SimulatorConfig(), request(KNOWN, {"authorization": "Bearer x"}), 403),
        ("not Bearer", SimulatorConfig(), request(KNOWN, {"authorization": "Basic eA=="}), 400),
        ("no credentials", SimulatorConfig(), request(KNOWN, {}), 400),
        ("legacy pair, not configured", SimulatorConfig(), request(KNOWN, LEGACY), 403),
        ("legacy wrong key", legacy, request(KNOWN, {**LEGACY, "x-auth-key": "nope"}), 403),
        ("legacy email only", legacy, request(KNOWN, {"x-auth-email": "soc@example.com"}), 400),
        ("bad account", SimulatorConfig(), request(KNOWN, account="ABC"), 400),
        ("unknown route", SimulatorConfig(), request("", raw_path="/client/v4/accounts"), 404),
        ("wrong method", SimulatorConfig(), request(KNOWN, method="POST"), 405),
    ]
    # Server errors with Cloudflare's JSON envelope (the 52x HTML pages are not JSON).
    for kind, status in (("json_500", 500), ("json_502", 502), ("json_503", 503)):
        config = SimulatorConfig(fault_by_id={KNOWN: kind})
        cases.append((kind, config, request(KNOWN), status))
    # The rate limit: the second call in the window is refused (429, code 971).
    rate_limit = ("rate limited", SimulatorConfig(rate_limit=1), [request(KNOWN)] * 2, 429)
    return [(what, config, [req], status) for what, config, req, status in cases] + [rate_limit]


ERROR_CASES = _error_cases()


def code_below_minimum(error: jsonschema.ValidationError) -> bool:
    """The schema says error codes are >= 1000, but Cloudflare's rate limit answers 971."""
    return (
        error.validator == "minimum"
        and error.instance == 971
        and (list(error.absolute_path)[-1:] == ["code"])
    )


@pytest.mark.parametrize(
    ("config", "requests", "status"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
async def test_every_simulator_error_body_fits_the_4xx_schema(
    config: SimulatorConfig, requests: list[Request], status: int
) -> None:
    simulator = Simulator(config)
    for req in requests:
        response = await simulator(req)
    assert response.status == status
    assert response.content_type == "application/json"
    doc = orjson.loads(response.body)
    problems = list(SCHEMA_4XX.iter_errors(doc))
    if status == 429:
        # Schema gap, not a simulator bug: the published envelope puts every code at >= 1000
        # while Cloudflare's 429 carries code 971 (API-NOTES.md); that is the only deviation.
        assert problems, "the 429 body is expected to carry code 971"
        assert all(code_below_minimum(p) for p in problems), problems
        assert doc["errors"][0]["code"] == 971
    else:
        assert problems == []
    with pytest.raises(ApiError):
        parse_answer(response.status, {}, response.body, default_retry_after_s=300)


async def test_error_bodies_for_many_unknown_ids_and_seeds() -> None:
    for seed in SEEDS:
        for status in (404, 400):
            config = SimulatorConfig(seed=seed, catalog_size=0, unknown_status=status)
            simulator = Simulator(config)
            for index in range(10):
                response = await simulator(request(catalog_id(seed, index)))
                assert response.status == status
                SCHEMA_4XX.validate(orjson.loads(response.body))
                with pytest.raises(NotFoundError):
                    parse_answer(status, {}, response.body, default_retry_after_s=300)


# --- what the SDK (cloudflare 5.9.0) knows of the schema --------------------------------------
#
# The pinned SDK does NOT lag the 2026 schema: it has findings, the attachment hashes and
# filename, and an optional threat category id. Its one gap is the enums: the disposition,
# attachment and finding detections and the validation results are closed ``Literal``s.
# In its default mode that only makes its type annotations wrong (construct_type keeps an
# unknown string as it is); in its strict mode an unknown value fails the whole answer with
# APIResponseValidationError. The worker keeps such values and counts them
# (test_proof_unknown_enum).

_SDK_OBJECTS: dict[str, type[Any]] = {
    "": sdk_types.DetectionGetResponse,
    "attachments": sdk_types.Attachment,
    "findings": sdk_types.Finding,
    "headers": sdk_types.Header,
    "links": sdk_types.Link,
    "sender_info": sdk_types.SenderInfo,
    "threat_categories": sdk_types.ThreatCategory,
    "validation": sdk_types.Validation,
}


def _result_objects(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The object schemas of a 200 body's result, by field ("" for result itself)."""
    result = body["properties"]["result"] if "properties" in body else None
    if result is None:  # the 2025 body is an allOf of the envelope and {result}
        result = next(
            m["properties"]["result"] for m in body["allOf"] if "result" in m.get("properties", {})
        )
    objects = {"": result}
    for name, sub in result["properties"].items():
        node = sub.get("items", sub) if sub.get("type") != "object" else sub
        if "anyOf" in node:
            node = next(n for n in node["anyOf"] if n.get("type") != "null")
        if "properties" in node:
            objects[name] = node
    return objects


@pytest.mark.parametrize(("shape", "body"), [("2026", BODY_2026), ("2025", BODY_2025)])
def test_sdk_has_every_field_of_the_schema(shape: str, body: dict[str, Any]) -> None:
    objects = _result_objects(body)
    assert set(objects) == set(_SDK_OBJECTS) - ({"findings"} if shape == "2025" else set())
    for name, schema in objects.items():
        sdk_fields = set(_SDK_OBJECTS[name].model_fields)
        assert set(schema["properties"]) <= sdk_fields, name
        if shape == "2026":
            assert set(schema["properties"]) == sdk_fields, name
    # What the SDK requires, the schema requires too (so it rejects no valid answer).
    for name, schema in objects.items():
        required_by_sdk = {
            field for field, info in _SDK_OBJECTS[name].model_fields.items() if info.is_required()
        }
        assert required_by_sdk <= set(schema.get("required", ())), name


def _literal_values(annotation: Any) -> set[str]:
    values: set[str] = set()
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            values |= set(typing.get_args(arg))
    return values


def test_sdk_enums_are_the_documented_ones() -> None:
    disposition_fields = [
        sdk_types.DetectionGetResponse.model_fields["final_disposition"],
        sdk_types.Attachment.model_fields["detection"],
        sdk_types.Finding.model_fields["detection"],
    ]
    for field in disposition_fields:
        assert _literal_values(field.annotation) == DISPOSITIONS
    for name in ("spf", "dkim", "dmarc"):
        annotation = sdk_types.Validation.model_fields[name].annotation
        assert _literal_values(annotation) == VALIDATION_RESULTS


UNKNOWN_ENUMS: dict[str, Any] = {
    "action": "QUARANTINED",
    "attachments": [{"size": 10, "detection": "ZERO-DAY"}],
    "findings": [{"detection": "PHISH-KIT", "score": 12.0}],
    "final_disposition": "QUANTUM-PHISH",
    "headers": [],
    "links": [],
    "sender_info": {},
    "threat_categories": [],
    "validation": {"spf": "softfail", "dkim": "pass", "dmarc": "none"},
}


def test_sdk_gap_unknown_enum_values() -> None:
    body = orjson.dumps({"result": UNKNOWN_ENUMS, "success": True, "errors": [], "messages": []})
    # Default mode: the raw strings survive, although the SDK's types say they cannot.
    loose = sdk_get(body)
    assert loose.final_disposition == "QUANTUM-PHISH"
    assert loose.attachments[0].detection == "ZERO-DAY"
    assert loose.findings is not None
    assert loose.findings[0].detection == "PHISH-KIT"
    assert loose.validation.spf == "softfail"
    # Strict mode: the whole answer is refused, for exactly those four values.
    with pytest.raises(cloudflare.APIResponseValidationError) as refused:
        sdk_get(body, strict=True)
    cause = refused.value.__cause__
    assert isinstance(cause, pydantic.ValidationError)
    assert {(e["loc"], e["type"]) for e in cause.errors()} == {
        (("result", "final_disposition"), "literal_error"),
        (("result", "attachments", 0, "detection"), "literal_error"),
        (("result", "findings", 0, "detection"), "literal_error"),
        (("result", "validation", "spf"), "literal_error"),
    }


def test_worker_reads_the_same_answer_without_loss() -> None:
    body = json.dumps({"result": UNKNOWN_ENUMS, "success": True, "errors": [], "messages": []})
    detections = parse_answer(200, {}, body.encode(), default_retry_after_s=300)
    assert detections.final_disposition == "QUANTUM-PHISH"
    assert detections.attachments[0].detection == "ZERO-DAY"
