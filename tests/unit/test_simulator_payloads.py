"""Simulator payloads use every freedom of the published schema, and stay valid against it.

Read from the schema itself (tests/unit/schema.py): every nullable field of each shape is
null for some ids, optional fields are absent for some, every object sometimes carries a
key the schema does not list, and every 200 body is still valid for its shape. Headers
carry real-world encodings. Ids share a bounded set of drawn payloads with their own id
spliced in; the worker's parser accepts all of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.unit.schema import BODY_2025, BODY_2026, SCHEMA_2025, SCHEMA_2026
from tests.unit.simcalls import detections_call
from worker.cloudflare.answers import parse_answer
from worker.httpserver import Request
from worker.simulator import API_PREFIX, DEFAULT_TOKEN, Simulator, SimulatorConfig, catalog_id
from worker.simulator.app import hash_fraction

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
N_IDS = 1500


call = detections_call


async def bodies(config: SimulatorConfig, n: int = N_IDS) -> dict[str, list[dict[str, Any]]]:
    """200 bodies of the first n catalogue ids, by shape."""
    sim = Simulator(dataclasses.replace(config, rate_limit=0))
    shapes: dict[str, list[dict[str, Any]]] = {"2025": [], "2026": []}
    for index in range(n):
        investigate_id = catalog_id(config.seed, index)
        response = await sim(call(investigate_id))
        assert response.status == 200
        shape = (
            "2025"
            if hash_fraction(config.seed, investigate_id) < config.shape_2025_ratio
            else "2026"
        )
        shapes[shape].append(orjson.loads(response.body))
    return shapes


# --- reading the schema -------------------------------------------------------------------


def _is_nullable(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    if isinstance(kinds, list) and "null" in kinds:
        return True
    if None in schema.get("enum", []):
        return True
    return any(member.get("type") == "null" for member in schema.get("anyOf", []))


def _members(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield schema
    for key in ("allOf", "anyOf"):
        for member in schema.get(key, []):
            yield from _members(member)


def schema_paths(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, bool, bool]]:
    """(path, nullable, optional) of every property under ``schema``."""
    for member in _members(schema):
        required = set(member.get("required", []))
        for name, sub in member.get("properties", {}).items():
            sub_path = f"{path}.{name}"
            yield sub_path, _is_nullable(sub), name not in required
            yield from schema_paths(sub, sub_path)
        if "items" in member:
            yield from schema_paths(member["items"], f"{path}[]")


def result_schema(body_schema: dict[str, Any]) -> dict[str, Any]:
    for member in _members(body_schema):
        if "result" in member.get("properties", {}):
            found: dict[str, Any] = member["properties"]["result"]
            return found
    raise AssertionError("no result in the schema")


def observed(doc: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, "null" | "value") of every value, and (path, "absent") is derived by the caller."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield f"{path}.{key}", "null" if value is None else "value"
            yield from observed(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for item in doc:
            yield from observed(item, f"{path}[]")


def parents_and_keys(doc: Any, path: str = "") -> Iterator[tuple[str, frozenset[str]]]:
    """(path of an object, its keys) for every object in ``doc``."""
    if isinstance(doc, dict):
        yield path, frozenset(doc)
        for key, value in doc.items():
            yield from parents_and_keys(value, f"{path}.{key}")
    elif isinstance(doc, list):
        for item in doc:
            yield from parents_and_keys(item, f"{path}[]")


SHAPES = {"2026": (BODY_2026, SCHEMA_2026), "2025": (BODY_2025, SCHEMA_2025)}


@pytest.mark.parametrize("shape", ["2026", "2025"])
async def test_every_nullable_field_is_sometimes_null(shape: str) -> None:
    docs = (await bodies(SimulatorConfig(seed=11, shape_2025_ratio=0.5)))[shape]
    paths = list(schema_paths(result_schema(SHAPES[shape][0])))
    nullable = {p for p, is_nullable, _ in paths if is_nullable}
    assert nullable, "the schema walk found nothing"
    seen_null = {p for doc in docs for p, kind in observed(doc["result"]) if kind == "null"}
    assert nullable - seen_null == set()
    # ...and nothing the schema lists as not nullable is ever null.
    known = {p for p, _, _ in paths}
    assert (seen_null & known) - nullable == set()


async def test_optional_fields_are_sometimes_absent() -> None:
    docs = (await bodies(SimulatorConfig(seed=11, shape_2025_ratio=0.5)))["2026"]
    optional = {p for p, _, is_optional in schema_paths(result_schema(BODY_2026)) if is_optional}
    present: dict[str, int] = {}
    objects: dict[str, int] = {}
    for doc in docs:
        for parent, keys in parents_and_keys(doc["result"]):
            objects[parent] = objects.get(parent, 0) + 1
            for key in keys:
                present[f"{parent}.{key}"] = present.get(f"{parent}.{key}", 0) + 1
    never_absent = {
        p
        for p in optional
        if p.rsplit(".", 1)[0] in objects and present.get(p, 0) == objects[p.rsplit(".", 1)[0]]
    }
    assert never_absent == set()


@pytest.mark.parametrize("shape", ["2026", "2025"])
async def test_unknown_keys_appear_in_every_kind_of_object(shape: str) -> None:
    docs = (await bodies(SimulatorConfig(seed=11, shape_2025_ratio=0.5)))[shape]
    known = {p for p, _, _ in schema_paths(result_schema(SHAPES[shape][0]))}
    with_extra = set()
    for doc in docs:
        for parent, keys in parents_and_keys(doc["result"]):
            if any(f"{parent}.{key}" not in known for key in keys):
                with_extra.add(parent)
    objects = {"", ".attachments[]", ".sender_info", ".threat_categories[]", ".links[]"}
    objects |= {".validation", ".headers[]"}
    if shape == "2026":
        objects.add(".findings[]")
    assert objects <= with_extra
    notices = [m for doc in docs for m in doc["messages"]]
    assert notices
    assert all(m["type"] is None and m["code"] >= 1000 for m in notices)


@pytest.mark.parametrize(
    ("null_ratio", "extra_keys_ratio"), [(0.0, 0.0), (1.0, 1.0), (0.5, 0.0), (0.0, 1.0)]
)
async def test_bodies_stay_valid_at_the_extremes(
    null_ratio: float, extra_keys_ratio: float
) -> None:
    config = SimulatorConfig(
        seed=3, shape_2025_ratio=0.5, null_ratio=null_ratio, extra_keys_ratio=extra_keys_ratio
    )
    for shape, docs in (await bodies(config, 400)).items():
        for doc in docs:
            SHAPES[shape][1].validate(doc)
            parse_answer(200, {}, orjson.dumps(doc), default_retry_after_s=1)
    if null_ratio == 0 and extra_keys_ratio == 0:
        assert all(doc["messages"] == [] for doc in docs)


async def test_headers_carry_real_world_encodings() -> None:
    docs = (await bodies(SimulatorConfig(seed=11), 600))["2026"]
    values = [h["value"] for doc in docs for h in doc["result"]["headers"]]
    subjects = [
        h["value"] for doc in docs for h in doc["result"]["headers"] if h["name"] == "Subject"
    ]
    assert any("=?utf-8?B?" in s for s in subjects)  # RFC 2047, base64
    assert any("?Q?" in s for s in subjects)  # RFC 2047, quoted-printable
    assert any("=?windows-1252?" in s or "=?iso-8859-1?" in s for s in subjects)
    assert any("=?utf-8?B?not*valid" in s for s in subjects)  # broken encoded word
    assert any(not s.isascii() for s in subjects)  # raw UTF-8 (CJK, Cyrillic, Arabic, ...)
    assert any("\r\n" in v for v in values)  # folded
    assert any(len(v) > 10_000 for v in values)  # very long
    assert any(v == "" for v in values)
    assert any("\x00" in v for v in values)  # a NUL, as broken mailers send


async def test_ids_share_variants_but_each_carries_its_own_id() -> None:
    config = SimulatorConfig(seed=5, payload_variants=4, shape_2025_ratio=0.0)
    sim = Simulator(config)
    ids = [catalog_id(5, i) for i in range(40)]
    raw = {i: (await sim(call(i))).body for i in ids}
    for investigate_id, body in raw.items():
        doc = orjson.loads(body)
        message_id = next(h for h in doc["result"]["headers"] if h["name"] == "Message-ID")
        assert message_id["value"].startswith(f"<{investigate_id[:16]}@")
        SCHEMA_2026.validate(doc)
    # Only 4 distinct payloads once the id prefix is blanked out.
    blanked = {body.replace(i[:16].encode(), b"ID") for i, body in raw.items()}
    assert len(blanked) == 4
    # variants=0: every id its own payload.
    own = Simulator(dataclasses.replace(config, payload_variants=0))
    distinct = {(await own(call(i))).body.replace(i[:16].encode(), b"ID") for i in ids}
    assert len(distinct) >= 38


async def test_odd_ids_are_spliced_as_json() -> None:
    sim = Simulator(SimulatorConfig(accept_any_id=True))
    for odd in ['a"b\\c', "Überweisung-ÄÖÜ-x", "47JJcT1w6GztQV7-email@example.com", "\x01ctl"]:
        path = f"{API_PREFIX}/accounts/{ACCOUNT}/email-security/investigate/x/detections"
        request = Request("GET", path, path, {}, {"authorization": f"Bearer {DEFAULT_TOKEN}"})
        body = (
            await sim(dataclasses.replace(request, raw_path=path.replace("/x/", f"/{odd}/")))
        ).body
        doc = orjson.loads(body)
        message_id = next(h for h in doc["result"]["headers"] if h["name"] == "Message-ID")
        assert message_id["value"].startswith(f"<{odd[:16]}@")
