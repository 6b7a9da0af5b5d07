"""Golden answers flatten to exactly the checked-in events.

Each ``golden/<name>.answer.json`` is a whole API answer (envelope included) and
``golden/<name>.event.json`` the event the worker must make of it, with ``enriched_at``
replaced by ``ENRICHED_AT`` (the real value is checked for its format). The request
(ids, source, context) is the same fixed one for every case. The event files were reviewed
field by field against their answers by hand; see golden/README.md, which also says how to
regenerate them (``UPDATE_GOLDEN=1``) and what to check before committing the result.

Besides the exact comparison: each answer fits the published schema of its shape (but
``unknown-enum-values``, which is outside the schema on purpose), the official SDK parses it,
and the event agrees with ``expected_content`` of the SDK's parse.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.schema import (
    DATA,
    SCHEMA_2025,
    SCHEMA_2026,
    assert_same_json,
    content_of,
    expected_content,
    sdk_parse,
)
from worker.cloudflare.answers import parse_answer
from worker.events import Source, build_event
from worker.inputs import EnrichRequest

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    # name: shape of its result (the schema it must fit), or None when outside the schema
    "reference-example": "2026",
    "malicious-bec-2026": "2026",
    "shape-2025-nulls": "2025",
    "findings-null": "2026",
    "unknown-extra-keys": "2026",
    "unknown-enum-values": None,
}
REQUEST = EnrichRequest(
    "4Njp3P0STMz2c02Q-2026-03-17T08:41:07-00001841",
    "023e105f4ecef8ad9ca31a8372d0c353",
    {"alert_id": "ALERT-17", "case": {"id": 9, "tags": ["bec", "finance"]}},
)
SOURCE = Source("email-investigate-ids", 2, 1841)
ENRICHED_AT = "<enriched_at>"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def flatten(answer: bytes) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    detections = parse_answer(200, {}, answer, default_retry_after_s=300)
    unknown: list[tuple[str, str]] = []
    event = build_event(detections, REQUEST, SOURCE, on_unknown=lambda f, v: unknown.append((f, v)))
    assert RFC3339_MS.match(event["enriched_at"]), event["enriched_at"]
    event["enriched_at"] = ENRICHED_AT
    return event, unknown


def test_the_case_list_is_the_directory() -> None:
    answers = {p.name.removesuffix(".answer.json") for p in GOLDEN.glob("*.answer.json")}
    events = {p.name.removesuffix(".event.json") for p in GOLDEN.glob("*.event.json")}
    assert answers == set(CASES)
    assert events == set(CASES)


def test_reference_example_is_the_verbatim_copy() -> None:
    golden = (GOLDEN / "reference-example.answer.json").read_bytes()
    assert golden == (DATA / "detections-reference-example.json").read_bytes()
    doc = json.loads(golden)
    assert doc["success"] is True
    assert doc["errors"], "the reference answer has errors next to success: true"


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_event(name: str) -> None:
    answer = (GOLDEN / f"{name}.answer.json").read_bytes()
    event, _ = flatten(answer)
    path = GOLDEN / f"{name}.event.json"
    if UPDATE:
        path.write_text(json.dumps(event, indent=2, ensure_ascii=False) + "\n")
    assert_same_json(event, json.loads(path.read_text()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_answer_fits_the_schema_and_the_sdk(name: str) -> None:
    answer = (GOLDEN / f"{name}.answer.json").read_bytes()
    doc = json.loads(answer)
    shape = CASES[name]
    if shape == "2026":
        SCHEMA_2026.validate(doc)
        assert "findings" in doc["result"]
    elif shape == "2025":
        SCHEMA_2025.validate(doc)
        assert not SCHEMA_2026.is_valid(doc)  # no findings: really the older shape
    else:
        assert not SCHEMA_2026.is_valid(doc)
        assert not SCHEMA_2025.is_valid(doc)
    event, unknown = flatten(answer)
    assert_same_json(content_of(event), expected_content(sdk_parse(answer)))
    if shape is None:
        assert unknown  # see test_proof_unknown_enum for the values and the metric
        return
    assert unknown == []
    sdk_parse(answer, strict=True)  # the SDK's types accept every schema-valid answer
