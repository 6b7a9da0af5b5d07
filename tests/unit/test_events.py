"""worker.events: build_event (schema v1) and build_dlq_record.

The reference example is flattened and every field of the event is checked; the 2025 shape
(no findings, null disposition and validation values) and partial objects must still give
a complete event. Also: RFC 2047 subjects, header lookup rules, link domains, unknown enum
values (kept raw, reported), deterministic event ids, and DLQ records that keep the
original bytes exactly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from worker import __version__
from worker.cloudflare.models import Detections
from worker.events import (
    DLQ_SCHEMA_VERSION,
    EVENT_ID_NAMESPACE,
    SCHEMA_VERSION,
    Source,
    build_dlq_record,
    build_event,
    event_id,
)
from worker.inputs import EnrichRequest
from worker.retry import Attempts

DATA = Path(__file__).parent / "data"
ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
OTHER_ACCOUNT = "0123456789abcdef0123456789abcdef"
INVESTIGATE_ID = "4Njp3P0STMz2c02Q-2024-01-05T10:00:00-12345678"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
EMPTY_HEADERS = dict.fromkeys(
    ("from", "to", "cc", "reply_to", "subject", "message_id", "date"), None
)


def reference_result() -> dict[str, Any]:
    doc = json.loads((DATA / "detections-reference-example.json").read_text())
    return doc["result"]


def example_2025_result() -> dict[str, Any]:
    spec = json.loads((DATA / "openapi-email-security.json").read_text())
    path = "/accounts/{account_id}/email-security/investigate/{postfix_id}/detections"
    schema = spec["previous_2025"]["paths"][path]["get"]["responses"]["200"]["content"]
    return schema["application/json"]["schema"]["allOf"][1]["properties"]["result"]["example"]


def event_for(
    result: dict[str, Any],
    *,
    context: Any = None,
    source: Source | None = None,
    unknown: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    request = EnrichRequest(INVESTIGATE_ID, ACCOUNT, context)
    report = (lambda f, v: unknown.append((f, v))) if unknown is not None else (lambda f, v: None)
    return build_event(Detections.model_validate(result), request, source, on_unknown=report)


def test_reference_example_every_field() -> None:
    unknown: list[tuple[str, str]] = []
    context = {"ticket": "SOC-9", "nested": [1, {"a": None}]}
    event = event_for(
        reference_result(), context=context, source=Source("ids", 3, 42), unknown=unknown
    )
    assert RFC3339_MS.match(event.pop("enriched_at"))
    assert event == {
        # Pinned: event ids are the consumers' dedup key and must not change silently.
        "event_id": "5d664c66-ff76-5386-9c05-a1ba1a40ef29",
        "schema_version": 1,
        "investigate_id": INVESTIGATE_ID,
        "account_id": ACCOUNT,
        "source": {"topic": "ids", "partition": 3, "offset": 42},
        "final_disposition": "MALICIOUS",
        "action": "action",
        "threat_categories": ["name"],
        "sender": {"ip": "ip", "as_number": 0, "as_name": "as_name", "geo": "geo", "pld": "pld"},
        "validation": {"spf": "pass", "dkim": "pass", "dmarc": "pass", "comment": "comment"},
        "attachments": {
            "count": 1,
            "names": ["filename"],
            "content_types": ["content_type"],
            "sizes": [0],
            "md5": ["md5"],
            "sha1": ["sha1"],
            "sha256": ["sha256"],
            "detections": ["MALICIOUS"],
            "encrypted": [True],
        },
        "links": {"count": 1, "hrefs": ["href"], "domains": []},
        "findings": {
            "count": 1,
            "max_score": 0.0,
            "items": [
                {
                    "name": "name",
                    "detection": "MALICIOUS",
                    "score": 0.0,
                    "field": "field",
                    "value": "value",
                    "portion": "portion",
                    "reason": "reason",
                    "detail": "detail",
                    "attachment": "attachment",
                }
            ],
        },
        "headers": EMPTY_HEADERS,
        "context": context,
    }
    assert unknown == []


def test_event_is_json_serializable() -> None:
    event = event_for(reference_result(), context={"k": "v"})
    assert json.loads(json.dumps(event)) == event


def test_2025_example_as_published() -> None:
    event = event_for(example_2025_result())
    assert event["final_disposition"] == "MALICIOUS"
    assert event["action"] == "QUARANTINED"
    assert event["findings"] == {"count": 0, "max_score": None, "items": []}
    assert event["attachments"]["count"] == 0
    assert event["threat_categories"] == ["IP Reputation"]
    assert event["validation"] == {"spf": "fail", "dkim": "pass", "dmarc": "none", "comment": None}
    assert event["sender"]["geo"] == "US/-/-"
    assert event["links"] == {
        "count": 1,
        "hrefs": ["https://example.com"],
        "domains": ["example.com"],
    }
    assert event["headers"]["from"] == "Sender Name <d1994@example.com>"
    assert event["headers"]["subject"].startswith("listen, I highly recommend")
    assert event["source"] is None
    assert event["context"] is None


def test_2025_shape_with_null_disposition_and_validation() -> None:
    result = example_2025_result()
    result["final_disposition"] = None
    result["validation"] = {"comment": None, "dkim": None, "dmarc": None, "spf": None}
    unknown: list[tuple[str, str]] = []
    event = event_for(result, unknown=unknown)
    assert event["final_disposition"] is None
    assert event["validation"] == dict.fromkeys(("spf", "dkim", "dmarc", "comment"))
    assert event["findings"]["count"] == 0
    assert unknown == []


def test_empty_result_still_gives_every_key() -> None:
    event = event_for({})
    full = event_for(reference_result())
    assert event.keys() == full.keys()
    assert event["sender"] == dict.fromkeys(("ip", "as_number", "as_name", "geo", "pld"))
    assert event["validation"] == dict.fromkeys(("spf", "dkim", "dmarc", "comment"))
    assert event["attachments"]["count"] == 0
    assert event["headers"] == EMPTY_HEADERS


def test_findings_null() -> None:
    result = reference_result()
    result["findings"] = None
    assert event_for(result)["findings"] == {"count": 0, "max_score": None, "items": []}


def test_max_score_ignores_missing_scores() -> None:
    result = reference_result()
    result["findings"] = [{"score": 12.5}, {"score": None}, {"name": "x"}, {"score": 80.25}]
    findings = event_for(result)["findings"]
    assert findings["count"] == 4
    assert findings["max_score"] == 80.25


def test_threat_category_without_id_and_without_name() -> None:
    result = reference_result()
    result["threat_categories"] = [
        {"name": "BEC", "description": None},
        {"id": 7, "name": None},
        {"id": 8, "name": "Spoofed Sender"},
    ]
    assert event_for(result)["threat_categories"] == ["BEC", "Spoofed Sender"]


def test_attachment_with_only_size() -> None:
    result = reference_result()
    result["attachments"] = [{"size": 1234}, {"size": 1, "name": "n.pdf", "filename": None}]
    attachments = event_for(result)["attachments"]
    assert attachments == {
        "count": 2,
        "names": [None, "n.pdf"],
        "content_types": [None, None],
        "sizes": [1234, 1],
        "md5": [None, None],
        "sha1": [None, None],
        "sha256": [None, None],
        "detections": [None, None],
        "encrypted": [None, None],
    }


def test_filename_is_preferred_over_name() -> None:
    result = reference_result()
    result["attachments"] = [{"size": 1, "name": "old.pdf", "filename": "new.pdf"}]
    assert event_for(result)["attachments"]["names"] == ["new.pdf"]


def headers_event(*pairs: tuple[str, str]) -> dict[str, str | None]:
    result = {"headers": [{"name": n, "value": v} for n, v in pairs]}
    return event_for(result)["headers"]


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("=?utf-8?B?w5xiZXJ3ZWlzdW5nIGJlc3TDpHRpZ3VuZw==?=", "Überweisung bestätigung"),
        ("=?UTF-8?b?w5xiZXJ3ZWlzdW5n?=", "Überweisung"),
        ("=?iso-8859-1?Q?R=E9sum=E9_attached?=", "Résumé attached"),
        ("Re: =?utf-8?B?w5xiZXJ3ZWlzdW5n?= now", "Re: Überweisung now"),
        ("=?utf-8?q?caf=C3=A9?= =?utf-8?q?_bar?=", "café bar"),
        ("Plain subject =? not encoded", "Plain subject =? not encoded"),
        (
            "Zahlungserinnerung \u2013 bitte pr\u00fcfen",
            "Zahlungserinnerung \u2013 bitte pr\u00fcfen",
        ),
    ],
)
def test_rfc2047_subject_is_decoded(raw: str, decoded: str) -> None:
    assert headers_event(("Subject", raw))["subject"] == decoded


@pytest.mark.parametrize("raw", ["=?x-unknown-charset?B?YWJj?=", "=?utf-8?B?/w==?="])
def test_undecodable_encoded_word_keeps_the_raw_value(raw: str) -> None:
    assert headers_event(("Subject", raw))["subject"] == raw


def test_header_names_are_case_insensitive_and_first_occurrence_wins() -> None:
    headers = headers_event(
        ("X-Other", "ignored"),
        ("FROM", "first@example.com"),
        ("from", "second@example.com"),
        (" Reply-To ", "reply@example.com"),
        ("message-ID", "<id@example.com>"),
        ("To", "a@example.com"),
        ("TO", "b@example.com"),
        ("cC", "c@example.com"),
        ("DATE", "Mon, 05 Jan 2026 10:00:00 +0000"),
        ("subject", "hello"),
    )
    assert headers == {
        "from": "first@example.com",
        "to": "a@example.com",
        "cc": "c@example.com",
        "reply_to": "reply@example.com",
        "subject": "hello",
        "message_id": "<id@example.com>",
        "date": "Mon, 05 Jan 2026 10:00:00 +0000",
    }


def test_link_domains_are_lowercased_and_deduplicated_in_order() -> None:
    result = {
        "links": [
            {"href": "https://Login.Example.COM/a"},
            {"href": "http://docs.example.org/x", "text": None},
            {"href": "https://login.example.com./b"},
            {"href": "HTTPS://LOGIN.EXAMPLE.COM:8443/c"},
            {"href": "  https://user@evil.example/d  "},
            {"href": "mailto:someone@example.net"},
            {"href": "not a url"},
            {"href": "http://[::1"},
            {"href": ""},
        ]
    }
    links = event_for(result)["links"]
    assert links["count"] == 9
    assert len(links["hrefs"]) == 8  # the empty href is not a link target
    assert links["domains"] == ["login.example.com", "docs.example.org", "evil.example"]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"final_disposition": "MALICIOUS-PHISH"}, [("final_disposition", "MALICIOUS-PHISH")]),
        ({"validation": {"spf": "softfail"}}, [("validation.spf", "softfail")]),
        (
            {"validation": {"dkim": "PASS", "dmarc": "temperror"}},
            [("validation.dkim", "PASS"), ("validation.dmarc", "temperror")],
        ),
        (
            {"attachments": [{"size": 1, "detection": "QUARANTINE"}]},
            [("attachments.detection", "QUARANTINE")],
        ),
        ({"findings": [{"detection": "phish"}]}, [("findings.detection", "phish")]),
        ({"final_disposition": "NONE", "validation": {"spf": "none"}}, []),
    ],
)
def test_unknown_enum_values_are_kept_and_reported(
    result: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    unknown: list[tuple[str, str]] = []
    event = event_for(result, unknown=unknown)
    assert unknown == expected
    if "final_disposition" in result:
        assert event["final_disposition"] == result["final_disposition"]


def test_event_id_is_deterministic_and_distinct() -> None:
    first = event_id(ACCOUNT, INVESTIGATE_ID)
    assert first == event_id(ACCOUNT, INVESTIGATE_ID)
    assert uuid.UUID(first).version == 5
    others = {
        event_id(OTHER_ACCOUNT, INVESTIGATE_ID),
        event_id(ACCOUNT, INVESTIGATE_ID + "x"),
        event_id(ACCOUNT, "47JJcT1w6GztQV7-email@example.com"),
    }
    assert first not in others
    assert len(others) == 3


@pytest.mark.parametrize(
    "investigate_id", [INVESTIGATE_ID, "", "é€-ü", "a/b?c#d", "x" * 300, "\x00\n"]
)
def test_event_id_is_uuid5_of_the_versioned_account_and_id(investigate_id: str) -> None:
    expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"v1/{ACCOUNT}/{investigate_id}")
    assert event_id(ACCOUNT, investigate_id) == str(expected)


def test_event_id_does_not_depend_on_content_or_source() -> None:
    a = event_for(reference_result(), source=Source("t", 0, 1))
    b = event_for({}, source=Source("t", 5, 99))
    assert a["event_id"] == b["event_id"]
    assert a["schema_version"] == SCHEMA_VERSION


# --- DLQ records -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        b"\x00\xff",
        bytes(range(256)),
        b"",
        b' \r\n{"investigate_id": "a/b"}\n\t ',  # the parser strips; the DLQ must not
        "ü".encode("latin-1"),
    ],
)
def test_dlq_record_keeps_original_bytes_exactly(value: bytes) -> None:
    key = b"\xfe\x00key"
    record = build_dlq_record(
        reason="invalid_id", detail="d", source=Source("ids", 1, 7), key=key, value=value
    )
    assert base64.b64decode(record["original_value_b64"], validate=True) == value
    assert base64.b64decode(record["original_key_b64"], validate=True) == key
    assert json.loads(json.dumps(record)) == record


def test_dlq_record_without_key_value_or_attempts() -> None:
    record = build_dlq_record(reason="tombstone", detail="d", source=None, key=None, value=None)
    failed_at = record.pop("failed_at")
    assert RFC3339_MS.match(failed_at)
    assert record == {
        "dlq_schema_version": DLQ_SCHEMA_VERSION,
        "reason": "tombstone",
        "detail": "d",
        "source": None,
        "investigate_id": None,
        "original_key_b64": None,
        "original_value_b64": None,
        "original_truncated": False,
        "original_value_size": None,
        "original_value_sha256": None,
        "attempts": 0,
        "first_attempt_at": None,
        "last_attempt_at": None,
        "last_http_status": None,
        "last_error_codes": [],
        "worker_version": __version__,
    }


def test_dlq_record_with_attempts_and_source() -> None:
    attempts = Attempts(
        count=5,
        first_s=1767607200.0,  # 2026-01-05T10:00:00Z
        last_s=1767607209.5,
        last_status=404,
        last_codes=(7003,),
    )
    record = build_dlq_record(
        reason="not_found",
        detail="HTTP 404",
        source=Source("ids", 2, 99),
        key=None,
        value=b"abc",
        timestamp_ms=1767607200000,
        investigate_id="abc",
        attempts=attempts,
    )
    assert record["source"] == {
        "topic": "ids",
        "partition": 2,
        "offset": 99,
        "timestamp_ms": 1767607200000,
    }
    assert record["investigate_id"] == "abc"
    assert record["attempts"] == 5
    assert record["first_attempt_at"] == "2026-01-05T10:00:00.000Z"
    assert record["last_attempt_at"] == "2026-01-05T10:00:09.500Z"
    assert record["last_http_status"] == 404
    assert record["last_error_codes"] == [7003]


def test_a_huge_original_is_cut_so_the_dlq_record_always_fits() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB
    record = build_dlq_record(
        reason="oversized", detail="d", source=None, key=b"k", value=value,
        max_original_bytes=1000,
    )  # fmt: skip
    assert base64.b64decode(record["original_value_b64"]) == value[:1000]
    assert base64.b64decode(record["original_key_b64"]) == b"k"
    assert record["original_truncated"] is True
    assert record["original_value_size"] == len(value)
    assert record["original_value_sha256"] == hashlib.sha256(value).hexdigest()
