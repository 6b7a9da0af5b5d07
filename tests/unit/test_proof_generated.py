"""Schema-generated answers of both shapes parse and flatten, and agree with the official SDK.

5,000 answers per shape (10,000 in all) are drawn from the published 200 body schemas
(``BODY_2026`` / ``BODY_2025`` in tests/unit/schema.py) by ``SchemaSampler``, a small
generator driven by the schema: it walks ``type``, ``enum``, ``properties``, ``required``,
``items``, ``minItems``, ``minimum``, ``anyOf`` and ``allOf`` and draws a value that fits.
For each answer: the schema accepts it (so the generator cannot drift), the worker parses
it (``parse_answer``) and flattens it (``build_event``) without error and without calling
any schema value unknown, the event is JSON, the SDK parses it in both its modes, and every
content field of the event equals what ``expected_content`` (tests/unit/schema.py) derives
from the SDK's parse.

Why not hypothesis-jsonschema: 0.23.1 (its latest release) fails on the installed
hypothesis (6.170) with "AttributeError: 'many' object has no attribute 'more'" on the
first object it draws. ``random.Random`` seeded per shape gives the same 10,000 answers on
every run, at about 1.5 ms each for drawing, validating and checking one; a failure
prints the shape, the index and the body, ready to become a golden case.

Bounds and biases (every drawn answer is still validated against the unmodified schema):

* arrays get at most ``MAX_ITEMS`` items and free text at most ``MAX_TEXT`` characters
  (the schema sets no maximum);
* integers stay within int64, as the 2025 schema states (``format: int64``); orjson, the
  worker's JSON decoder, reads larger ones as floats. Numbers are finite doubles;
* free text never contains ``?``, so the only RFC 2047 encoded words are the hand-checked
  ones of ``ENCODED_WORDS`` (random text cannot form one by accident);
* ``HINTS`` draw realistic values at some places, most of the time: header names in odd
  cases and with padding, URL-shaped hrefs (upper-case hosts, trailing dots, ports,
  userinfo, broken IPv6, ``mailto:``, empty), file names, scores, Cloudflare error codes;
* error and message codes leave out the five the worker classifies by (see
  ``test_success_answer_carrying_a_classifying_code``, a known disagreement);
* ``success`` is ``true``: the 2026 schema says so (``enum: [true]``); the 2025 fragment
  types it as a plain boolean, but a 200 with ``success: false`` is a failure the worker
  rejects on purpose (tests/unit/test_answers.py);
* unknown extra keys appear in objects now and then (the schema allows them).
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests.unit.schema import (
    BODY_2025,
    BODY_2026,
    ENCODED_WORDS,
    SCHEMA_2025,
    SCHEMA_2026,
    assert_same_json,
    content_of,
    expected_content,
    rfc2047,
    sdk_parse,
    sdk_parse_strict,
)
from worker.cloudflare.answers import parse_answer
from worker.events import Source, build_event
from worker.inputs import EnrichRequest

EXAMPLES_PER_SHAPE = 5_000
MAX_ITEMS = 4
MAX_TEXT = 24
INT64 = (-(2**63), 2**63 - 1)
HINT_PROBABILITY = 0.7
OPTIONAL_PROBABILITY = 0.75
NULL_PROBABILITY = 0.25
EXTRA_KEY_PROBABILITY = 0.1

REQUEST = EnrichRequest(
    "4Njp3P0STMz2c02Q-2026-03-05T10:00:00-00004242",
    "023e105f4ecef8ad9ca31a8372d0c353",
    {"alert_id": "ALERT-1"},
)
SOURCE = Source("email-investigate-ids", 1, 4242)

# Free text: printable ASCII but "?", some Latin/CJK/astral characters, whitespace and
# control characters that JSON escapes.
_TEXT = (
    string.ascii_letters
    + string.digits
    + " .,:;-_@/<>()[]{}'\"!#$%&*+=~|\\^`"
    + "éüßÆ中文\U0001f600\u200b\u2028\t\n\r\x00\x7f"
).replace("?", "")
_EXTRA_KEYS = ["x_trace", "newField", "vendor_ext", "Score ", "", "é", "__proto__", "0"]


def _text(rng: random.Random, max_len: int = MAX_TEXT) -> str:
    return "".join(rng.choices(_TEXT, k=rng.randint(0, max_len)))


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    """Any JSON value, for unknown extra keys."""
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.randint(*INT64)
    if kind == 3:
        return rng.uniform(-1e9, 1e9)
    if kind == 4:
        return _text(rng)
    if kind == 5:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {_text(rng, 6): _json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}


# --- realistic values at some places ---------------------------------------------------------

_HEADER_NAMES = [
    "From",
    "from",
    "FROM",
    " From ",
    "From\t",
    "To",
    "TO",
    "to",
    "Cc",
    "CC",
    "Reply-To",
    "reply-to",
    "REPLY-TO",
    "Reply_To",
    "Subject",
    "subject",
    "SUBJECT",
    "Message-ID",
    "Message-Id",
    "message-id",
    "Date",
    "date",
    "X-From",
    "From-X",
    "Received",
    "X-Mailer",
    "",
]
_HOSTS = [
    "example.com",
    "Login.Example.COM",
    "login.example.com.",
    "docs.example.org",
    "xn--bcher-kva.example",
    "Bücher.example",
    "192.0.2.7",
    "[2001:db8::1]",
    "[::1",
    ".",
    "..",
    "a..",
    "",
]


def _href(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return ""
    if kind == 1:
        return _text(rng)
    if kind == 2:
        return f"mailto:{_text(rng, 8)}@example.net"
    scheme = rng.choice(["https", "http", "HTTPS", "ftp", ""])
    userinfo = rng.choice(["", "", "user@", "user:pw@"])
    port = rng.choice(["", "", ":8443", ":0"])
    path = rng.choice(["", "/", "/a1B2c3D4", "/x?q=1&r=%20#frag", "/p?next=https://other.example/"])
    href = f"{scheme}{':' if scheme else ''}//{userinfo}{rng.choice(_HOSTS)}{port}{path}"
    return rng.choice(["", " ", "\t"]) + href + rng.choice(["", " ", "\n"])


def _header_value(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(sorted(ENCODED_WORDS))
    if kind == 1:
        return f"{_text(rng, 8)} <{_text(rng, 6)}@example.com>"
    return _text(rng)


_FILES = ["invoice.pdf", "payroll.xlsm", "scan.zip", "", "ÜBERSICHT.DOCX", "a b.html"]
_CATEGORY_NAMES = ["IP Reputation", "Credential Harvester", "BEC", "", "Malicious Link"]
# Error and message codes that may ride along on a success answer, including those the
# worker acts on in a failure (6003/10000 auth, 7000/7003 not found): on a 200 with
# success: true they must classify nothing (see test_success_answer_carrying_a_classifying_code).
_CODES = [1000, 1001, 1002, 1003, 1099, 6003, 7000, 7003, 8000, 9106, 10000, 10001, 10002]
_CLASSIFYING_CODES = {971, 6003, 7000, 7003, 10000}


def _code(rng: random.Random) -> int:
    return rng.choice([*_CODES, rng.randint(1000, 10**6)])


def _score(rng: random.Random) -> float | int:
    return rng.choice(
        [0, 0.0, -0.0, 1, 50.5, 97.4, 100, 1e-9, 2**53, -3.25, rng.uniform(-100, 100)]
    )


Hint = Callable[[random.Random], Any]
HINTS: dict[tuple[str, ...], Hint] = {
    ("headers", "[]", "name"): lambda rng: rng.choice(_HEADER_NAMES),
    ("headers", "[]", "value"): _header_value,
    ("links", "[]", "href"): _href,
    ("attachments", "[]", "filename"): lambda rng: rng.choice([*_FILES, None]),
    ("attachments", "[]", "name"): lambda rng: rng.choice([*_FILES, None]),
    ("threat_categories", "[]", "name"): lambda rng: rng.choice([*_CATEGORY_NAMES, None]),
    ("findings", "[]", "score"): _score,
}
ALWAYS: dict[tuple[str, ...], Hint] = {
    ("success",): lambda rng: True,
    ("errors", "[]", "code"): _code,
    ("messages", "[]", "code"): _code,
}


# --- the generator ---------------------------------------------------------------------------


class SchemaSampler:
    """Draws JSON values that satisfy a JSON Schema (the keywords the detections schemas use)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def draw(self, schema: dict[str, Any], path: tuple[str, ...] = ()) -> Any:
        rng = self.rng
        always = ALWAYS.get(path[-3:]) or ALWAYS.get(path[-1:])
        if always is not None:
            return always(rng)
        hint = HINTS.get(path[-3:])
        if hint is not None and rng.random() < HINT_PROBABILITY:
            return hint(rng)
        if "allOf" in schema:
            return self.draw(_merge_all_of(schema["allOf"]), path)
        if "anyOf" in schema:
            options = schema["anyOf"]
            nulls = [o for o in options if o.get("type") == "null"]
            if nulls and rng.random() < NULL_PROBABILITY:
                return None
            return self.draw(rng.choice([o for o in options if o not in nulls] or nulls), path)
        if "enum" in schema:
            return rng.choice(schema["enum"])
        types = schema.get("type", "object")
        if isinstance(types, list):
            if "null" in types and rng.random() < NULL_PROBABILITY:
                return None
            types = rng.choice([t for t in types if t != "null"])
        return getattr(self, f"_{types}")(schema, path)

    def _null(self, schema: dict[str, Any], path: tuple[str, ...]) -> None:
        return None

    def _boolean(self, schema: dict[str, Any], path: tuple[str, ...]) -> bool:
        return self.rng.random() < 0.5

    def _integer(self, schema: dict[str, Any], path: tuple[str, ...]) -> int:
        low = max(schema.get("minimum", INT64[0]), INT64[0])
        high = min(schema.get("maximum", INT64[1]), INT64[1])
        near = [v for v in (low, low + 1, 0, 1, 1234, 65535, 2**31, high) if low <= v <= high]
        return self.rng.choice([*near, self.rng.randint(low, high), self.rng.randint(low, 10**6)])

    def _number(self, schema: dict[str, Any], path: tuple[str, ...]) -> float | int:
        rng = self.rng
        return rng.choice([0, 0.5, -1.0, 2**53, 1e300, 5e-324, rng.uniform(-1e6, 1e6)])

    def _string(self, schema: dict[str, Any], path: tuple[str, ...]) -> str:
        return _text(self.rng)

    def _array(self, schema: dict[str, Any], path: tuple[str, ...]) -> list[Any]:
        count = self.rng.randint(schema.get("minItems", 0), MAX_ITEMS)
        return [self.draw(schema.get("items", {}), (*path, "[]")) for _ in range(count)]

    def _object(self, schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        rng = self.rng
        properties: dict[str, Any] = schema.get("properties", {})
        required = set(schema.get("required", ()))
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if name in required or rng.random() < OPTIONAL_PROBABILITY:
                out[name] = self.draw(sub, (*path, name))
        if rng.random() < EXTRA_KEY_PROBABILITY:
            for name in rng.sample(_EXTRA_KEYS, k=rng.randint(1, 2)):
                assert name not in properties
                out[name] = _json_value(rng)
        items = list(out.items())
        rng.shuffle(items)  # key order carries no meaning
        return dict(items)


def _merge_all_of(members: list[dict[str, Any]]) -> dict[str, Any]:
    """One schema equivalent to ``allOf`` for the shapes the spec uses (objects, enums)."""
    merged: dict[str, Any] = {}
    for member in members:
        for key, value in member.items():
            if key == "properties":
                props = merged.setdefault("properties", {})
                for name, sub in value.items():
                    props[name] = {"allOf": [props[name], sub]} if name in props else sub
            elif key == "required":
                merged["required"] = sorted({*merged.get("required", ()), *value})
            elif key == "enum" and "enum" in merged:
                merged["enum"] = [v for v in merged["enum"] if v in value]
            elif key == "type" and "type" in merged:
                mine = set(_as_list(merged["type"])) & set(_as_list(value))
                assert mine, f"allOf members with disjoint types {merged['type']} and {value}"
                merged["type"] = sorted(mine)
            elif key not in merged:
                merged[key] = value
            else:
                assert merged[key] == value or key == "description", (key, merged[key], value)
    return merged


def _as_list(types: str | list[str]) -> list[str]:
    return types if isinstance(types, list) else [types]


# --- the proof -------------------------------------------------------------------------------


def _check_one(body: bytes) -> None:
    detections = parse_answer(200, {}, body, default_retry_after_s=300)
    unknown: list[tuple[str, str]] = []
    event = build_event(detections, REQUEST, SOURCE, on_unknown=lambda f, v: unknown.append((f, v)))
    assert unknown == [], "a value the schema documents was reported as unknown"
    assert orjson.loads(orjson.dumps(event)) == event
    assert event["investigate_id"] == REQUEST.investigate_id
    assert event["context"] == REQUEST.context
    loose = sdk_parse(body)
    strict = sdk_parse_strict(body)  # the SDK's types accept every schema-valid answer
    expected = expected_content(loose)
    assert_same_json(expected_content(strict), expected)
    assert_same_json(content_of(event), expected)


@pytest.mark.parametrize(
    ("shape", "body_schema", "validator", "seed"),
    [
        ("2026", BODY_2026, SCHEMA_2026, 2026),
        ("2025", BODY_2025, SCHEMA_2025, 2025),
    ],
)
def test_generated_answers_parse_flatten_and_agree_with_the_sdk(
    shape: str, body_schema: dict[str, Any], validator: Any, seed: int
) -> None:
    sampler = SchemaSampler(random.Random(f"proof:{shape}:{seed}"))
    started = time.perf_counter()
    seen = {"findings_null": 0, "findings_absent": 0, "attachments": 0, "links": 0}
    for index in range(EXAMPLES_PER_SHAPE):
        doc = sampler.draw(body_schema)
        validator.validate(doc)
        # Alternate raw UTF-8 and \u escapes, as servers differ.
        body = json.dumps(doc, ensure_ascii=index % 2 == 0).encode()
        try:
            _check_one(body)
        except Exception as exc:
            raise AssertionError(
                f"shape {shape}, example {index}: {exc!r}\nbody: {body.decode()}"
            ) from exc
        result = doc["result"]
        seen["findings_null"] += "findings" in result and result["findings"] is None
        seen["findings_absent"] += "findings" not in result
        seen["attachments"] += bool(result["attachments"])
        seen["links"] += bool(result["links"])
    elapsed = time.perf_counter() - started
    print(f"{shape}: {EXAMPLES_PER_SHAPE} examples in {elapsed:.1f} s, {seen}")
    # The draws cover what matters: both findings forms (2026), attachments, links.
    if shape == "2026":
        assert seen["findings_null"] > 100
    else:
        assert seen["findings_absent"] == EXAMPLES_PER_SHAPE
    assert seen["attachments"] > EXAMPLES_PER_SHAPE / 2
    assert seen["links"] > EXAMPLES_PER_SHAPE / 2


def test_sampler_honours_the_keywords_it_claims() -> None:
    sampler = SchemaSampler(random.Random(0))
    schema = {
        "type": "object",
        "required": ["n", "tags"],
        "properties": {
            "n": {"type": "integer", "minimum": 1000},
            "tags": {"type": "array", "minItems": 1, "items": {"enum": ["a", None]}},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "both": {"allOf": [{"type": "string", "enum": ["x", "y"]}, {"enum": ["y", "z"]}]},
        },
    }
    for _ in range(200):
        value = sampler.draw(schema)
        assert isinstance(value["n"], int)
        assert INT64[0] <= value["n"] <= INT64[1]
        assert value["n"] >= 1000
        assert 1 <= len(value["tags"]) <= MAX_ITEMS
        assert set(value["tags"]) <= {"a", None}
        assert value.get("maybe") is None or isinstance(value["maybe"], str)
        assert value.get("both", "y") == "y"


@pytest.mark.parametrize("code", sorted(_CLASSIFYING_CODES - {971}))  # 971 < the schema's 1000
def test_success_answer_carrying_a_classifying_code(code: int) -> None:
    result = {
        "action": "QUARANTINED",
        "attachments": [],
        "findings": None,
        "headers": [],
        "links": [],
        "sender_info": {},
        "threat_categories": [],
        "validation": {},
    }
    error = {"code": code, "message": "an error entry next to success: true"}
    doc = {"result": result, "success": True, "errors": [error], "messages": []}
    SCHEMA_2026.validate(doc)
    body = orjson.dumps(doc)
    assert sdk_parse(body).action == "QUARANTINED"
    detections = parse_answer(200, {}, body, default_retry_after_s=300)
    assert detections.action == "QUARANTINED"


@pytest.mark.parametrize(("raw", "decoded"), sorted(ENCODED_WORDS.items()))
def test_the_independent_decoder_agrees_with_the_hand_checked_table(raw: str, decoded: str) -> None:
    """rfc2047 (tests/unit/schema.py) decodes header values outside the table."""
    assert rfc2047(raw) == decoded
