"""The simulator's search call: cursor paging over the catalogue, 202 + Location, errors.

``GET {prefix}/accounts/{account}/email-security/investigate`` lists catalogue ids in order,
``per_page`` at a time, with an opaque ``result_info.next`` cursor; the deprecated ``page``
number still works. The bodies are checked against the published fragments: the 2026
response (with CursorResultInfo) and 202 schemas, and the 2025 MailsearchMessage for the
items (the 2026 MessageDetails schema is not in the fragment).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson
import pytest

from tests.unit.schema import SPEC, openapi_to_jsonschema, validator
from worker.httpserver import Request, Response
from worker.simulator import API_PREFIX, DEFAULT_TOKEN, Simulator, SimulatorConfig, catalog_id

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
SEARCH = f"{API_PREFIX}/accounts/{ACCOUNT}/email-security/investigate"
_CURRENT = SPEC["current_2026"]
_COMPONENTS = {
    **_CURRENT["components_reconstructed"]["schemas"],
    **_CURRENT["components_verbatim"]["schemas"],
    **SPEC["previous_2025"]["components"]["schemas"],
    # The 2026 item schema is missing from the fragment: check items against 2025's.
    "email-security_MessageDetails": SPEC["previous_2025"]["components"]["schemas"][
        "email-security_MailsearchMessage"
    ],
}
_RESPONSES = _CURRENT["paths"]["/accounts/{account_id}/email-security/investigate"]["get"][
    "responses"
]
SCHEMA_200 = validator(
    openapi_to_jsonschema(_RESPONSES["200"]["content"]["application/json"]["schema"], _COMPONENTS)
)
SCHEMA_202 = validator(
    openapi_to_jsonschema(_RESPONSES["202"]["content"]["application/json"]["schema"], _COMPONENTS)
)


def search(query: dict[str, str] | None = None, *, host: str | None = "127.0.0.1:18787") -> Request:
    query = query or {}
    headers = {"authorization": f"Bearer {DEFAULT_TOKEN}"}
    if host:
        headers["host"] = host
    return Request("GET", SEARCH, SEARCH, query, headers, query_string=urlencode(query))


async def page(sim: Simulator, query: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    response: Response = await sim(search(query))
    return response.status, orjson.loads(response.body)


async def walk(sim: Simulator, per_page: int) -> list[list[str]]:
    """Every page's ids, following ``next`` until it is null."""
    pages: list[list[str]] = []
    query = {"per_page": str(per_page)}
    while True:
        status, doc = await page(sim, query)
        assert status == 200
        SCHEMA_200.validate(doc)
        info = doc["result_info"]
        assert info["count"] == len(doc["result"])
        assert info["per_page"] == per_page
        assert info["total_count"] == 0  # deprecated: always 0
        pages.append([item["id"] for item in doc["result"]])
        if info["next"] is None:
            return pages
        assert len(pages) < 1000, "paging does not end"
        query = {"per_page": str(per_page), "cursor": info["next"]}


@pytest.mark.parametrize(("size", "per_page"), [(0, 5), (7, 5), (10, 5), (57, 10), (3, 1000)])
async def test_walking_all_pages_lists_the_catalogue_once_in_order(
    size: int, per_page: int
) -> None:
    sim = Simulator(SimulatorConfig(seed=4, catalog_size=size))
    pages = await walk(sim, per_page)
    ids = [i for p in pages for i in p]
    assert ids == [catalog_id(4, i) for i in range(size)]
    assert all(len(p) == per_page for p in pages[:-1])
    assert len(pages) == max(1, -(-size // per_page))


async def test_listed_ids_are_answered_by_the_detections_call() -> None:
    sim = Simulator(SimulatorConfig(seed=4, catalog_size=30))
    _, doc = await page(sim, {"per_page": "30"})
    for item in doc["result"]:
        path = f"{SEARCH}/{item['id']}/detections"
        detections = await sim(
            Request("GET", path, path, {}, {"authorization": f"Bearer {DEFAULT_TOKEN}"})
        )
        assert detections.status == 200
        result = orjson.loads(detections.body)["result"]
        assert item["final_disposition"] == result.get("final_disposition")
        subject = next(h["value"] for h in result["headers"] if h["name"] == "Subject")
        assert item["subject"] == subject
        assert item["postfix_id"] == item["id"][:16]


async def test_previous_cursor_goes_back() -> None:
    sim = Simulator(SimulatorConfig(seed=4, catalog_size=30))
    _, first = await page(sim, {"per_page": "10"})
    assert first["result_info"]["previous"] is None
    _, second = await page(sim, {"per_page": "10", "cursor": first["result_info"]["next"]})
    _, back = await page(sim, {"per_page": "10", "cursor": second["result_info"]["previous"]})
    assert back["result"] == first["result"]


async def test_deprecated_page_numbers_still_work() -> None:
    sim = Simulator(SimulatorConfig(seed=4, catalog_size=25))
    got = []
    for number in range(1, 5):
        _, doc = await page(sim, {"per_page": "10", "page": str(number)})
        got.append([item["id"] for item in doc["result"]])
    assert [len(p) for p in got] == [10, 10, 5, 0]
    assert [i for p in got for i in p] == [catalog_id(4, i) for i in range(25)]


async def test_default_per_page_is_20() -> None:
    _, doc = await page(Simulator(SimulatorConfig(catalog_size=100)))
    assert doc["result_info"]["per_page"] == 20
    assert len(doc["result"]) == 20


@pytest.mark.parametrize(
    "query",
    [
        {"per_page": "0"},
        {"per_page": "1001"},
        {"per_page": "ten"},
        {"cursor": "not-a-cursor"},
        {"cursor": ""},
        {"page": "0"},
    ],
)
async def test_bad_parameters_are_400(query: dict[str, str]) -> None:
    status, doc = await page(Simulator(SimulatorConfig()), query)
    assert status == 400
    assert doc["success"] is False
    assert doc["errors"][0]["code"] >= 1000


async def test_a_cursor_of_another_seed_is_refused() -> None:
    _, doc = await page(Simulator(SimulatorConfig(seed=1, catalog_size=50)), {"per_page": "5"})
    status, _ = await page(
        Simulator(SimulatorConfig(seed=2, catalog_size=50)), {"cursor": doc["result_info"]["next"]}
    )
    assert status == 400


async def test_search_needs_auth_and_a_valid_account() -> None:
    sim = Simulator(SimulatorConfig())
    denied = await sim(Request("GET", SEARCH, SEARCH, {}, {"authorization": "Bearer nope"}))
    assert denied.status == 403
    bad = SEARCH.replace(ACCOUNT, "abc")
    assert (await sim(Request("GET", bad, bad, {}, search().headers))).status == 400


# --- 202 + Location -----------------------------------------------------------------------


async def test_pending_polls_answer_202_with_a_location_to_the_same_query() -> None:
    sim = Simulator(SimulatorConfig(catalog_size=50, search_pending_polls=2))
    query = {"per_page": "10", "query": "invoice"}
    answers = [await sim(search(query)) for _ in range(3)]
    assert [a.status for a in answers] == [202, 202, 200]
    for accepted in answers[:2]:
        doc = orjson.loads(accepted.body)
        SCHEMA_202.validate(doc)
        assert doc["result"] == []
        location = dict(accepted.headers)["location"]
        url = urlsplit(location)
        assert (url.scheme, url.netloc, url.path) == ("http", "127.0.0.1:18787", SEARCH)
        assert dict(parse_qsl(url.query)) == query
    # Another query has its own count.
    assert (await sim(search({"per_page": "5"}))).status == 202


async def test_202_ratio_is_a_seeded_draw() -> None:
    runs = []
    for _ in range(2):
        sim = Simulator(SimulatorConfig(seed=9, catalog_size=5, search_202_ratio=0.3, rate_limit=0))
        runs.append([(await sim(search({"per_page": "5"}))).status for _ in range(1000)])
    assert runs[0] == runs[1]
    assert 250 < runs[0].count(202) < 350
    assert set(runs[0]) == {200, 202}


async def test_location_without_a_host_header_is_a_path() -> None:
    sim = Simulator(SimulatorConfig(search_pending_polls=1))
    response = await sim(search({"per_page": "3"}, host=None))
    assert dict(response.headers)["location"] == f"{SEARCH}?per_page=3"
