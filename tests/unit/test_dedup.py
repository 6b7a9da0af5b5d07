"""The budget is spent once per id: a TTL cache and single-flight sharing of calls."""

from __future__ import annotations

import asyncio

import httpx
import orjson
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests.unit.conftest import FakeClock
from worker.budget import Budget
from worker.cache import TtlCache
from worker.cloudflare.client import Credentials, DetectionsClient
from worker.enricher import Enricher
from worker.errors import NotFoundError
from worker.inputs import EnrichRequest
from worker.observability import Metrics
from worker.retry import Outcome, RetryPolicy

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
OK = orjson.dumps({"success": True, "errors": [], "messages": [], "result": {"action": "X"}})
MISSING = orjson.dumps(
    {
        "success": False,
        "errors": [{"code": 7003, "message": "No route"}],
        "messages": [],
        "result": None,
    }
)


class Api:
    """A mock Cloudflare that counts calls per id and can hold answers until released."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.release = asyncio.Event()
        self.release.set()
        self.fail_next = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        investigate_id = request.url.path.split("/")[-2]
        self.calls[investigate_id] = self.calls.get(investigate_id, 0) + 1
        await self.release.wait()
        if investigate_id.startswith("missing"):
            return httpx.Response(404, content=MISSING)
        if self.fail_next:
            self.fail_next -= 1
            return httpx.Response(503, content=b"{}")
        return httpx.Response(200, content=OK)


def make_enricher(
    http: httpx.AsyncClient, registry: CollectorRegistry, cache: TtlCache[tuple[str, str], object]
) -> Enricher:
    metrics = Metrics(registry)
    budget = Budget(calls=1000, window_s=60)
    client = DetectionsClient(
        base_url="https://api.example/client/v4",
        credentials=Credentials(token=SecretStr("t")),
        http=http,
        budget=budget,
        metrics=metrics,
        max_in_flight=50,
    )

    async def no_sleep(_: float) -> None:
        return None

    return Enricher(
        client=client,
        budget=budget,
        policy=RetryPolicy(max_attempts=2),
        metrics=metrics,
        sleep=no_sleep,
        cache=cache,  # type: ignore[arg-type]
    )


def request(investigate_id: str) -> EnrichRequest:
    return EnrichRequest(investigate_id=investigate_id, account_id=ACCOUNT)


async def test_concurrent_requests_for_one_id_share_one_call() -> None:
    api, registry = Api(), CollectorRegistry()
    api.release.clear()  # hold the first answer so that the others arrive meanwhile
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
        enricher = make_enricher(http, registry, TtlCache(ttl_s=0, max_entries=0))
        tasks = [asyncio.create_task(enricher.enrich(request("a1"))) for _ in range(10)]
        tasks.append(asyncio.create_task(enricher.enrich(request("b2"))))
        while sum(api.calls.values()) < 2:
            await asyncio.sleep(0)
        api.release.set()
        outcomes = await asyncio.gather(*tasks)
    assert api.calls == {"a1": 1, "b2": 1}
    assert all(o.detections is not None and o.detections.action == "X" for o in outcomes)
    assert registry.get_sample_value("enrich_cache_hits_total", {"kind": "shared"}) == 9


async def test_cache_answers_repeats_until_the_ttl_ends() -> None:
    api, registry, clock = Api(), CollectorRegistry(), FakeClock()
    cache: TtlCache[tuple[str, str], object] = TtlCache(ttl_s=60, max_entries=10, clock=clock)
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
        enricher = make_enricher(http, registry, cache)
        for _ in range(3):
            assert (await enricher.enrich(request("a1"))).detections is not None
        missing = [await enricher.enrich(request("missing-1")) for _ in range(2)]
        assert api.calls == {"a1": 1, "missing-1": 1}
        assert all(isinstance(o.error, NotFoundError) for o in missing)
        clock.now += 61
        await enricher.enrich(request("a1"))
    assert api.calls == {"a1": 2, "missing-1": 1}
    assert registry.get_sample_value("enrich_cache_hits_total", {"kind": "cache"}) == 3


async def test_exhausted_retries_are_not_cached() -> None:
    api, registry = Api(), CollectorRegistry()
    api.fail_next = 2  # both attempts of the first enrich fail
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
        enricher = make_enricher(http, registry, TtlCache(ttl_s=60, max_entries=10))
        first = await enricher.enrich(request("a1"))
        second = await enricher.enrich(request("a1"))
    assert first.error is not None
    assert first.error.reason == "retries_exhausted"
    assert second.detections is not None
    assert api.calls == {"a1": 3}


def test_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=60, max_entries=2, clock=FakeClock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    assert len(cache) == 2


def test_a_zero_ttl_turns_the_cache_off() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl_s=0, max_entries=10)
    cache.put("a", 1)
    assert cache.get("a") is None
    assert not cache.enabled


def test_cache_is_bounded_in_bytes_too() -> None:
    cache: TtlCache[str, str] = TtlCache(ttl_s=60, max_entries=10, max_bytes=10, weigh=len)
    cache.put("a", "aaaa")
    cache.put("b", "bbbb")
    cache.put("a", "AAAA")  # replacing a value does not count it twice
    assert cache.bytes == 8
    cache.put("c", "cccc")  # 12 bytes: the least recently used (b) goes
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == ("AAAA", None, "cccc")
    assert cache.bytes == 8
    cache.put("huge", "x" * 11)  # larger than the whole cache: not kept, nothing evicted
    assert (cache.get("huge"), len(cache), cache.bytes) == (None, 2, 8)
    assert not TtlCache(ttl_s=60, max_entries=10, max_bytes=0).enabled


async def test_a_repeat_from_the_cache_is_the_answer_parsed_again() -> None:
    api, registry = Api(), CollectorRegistry()
    cache: TtlCache[tuple[str, str], object] = TtlCache(ttl_s=60, max_entries=10)
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
        enricher = make_enricher(http, registry, cache)
        first = await enricher.enrich(request("a1"))
        again = await enricher.enrich(request("a1"))
    assert api.calls == {"a1": 1}
    assert again.detections == first.detections
    assert again.detections is not first.detections  # each message gets its own copy
    assert again.attempts.count == first.attempts.count == 1


async def owner_and_joiner(
    enricher: Enricher, registry: CollectorRegistry
) -> tuple[asyncio.Task[Outcome], asyncio.Task[Outcome]]:
    """Two enrich calls of one id: the first makes the call, the second joins it."""
    owner = asyncio.create_task(enricher.enrich(request("a1")))
    joiner = asyncio.create_task(enricher.enrich(request("a1")))
    deadline = asyncio.get_running_loop().time() + 5
    while registry.get_sample_value("enrich_cache_hits_total", {"kind": "shared"}) != 1:
        assert asyncio.get_running_loop().time() < deadline, "the joiner never joined"
        await asyncio.sleep(0)
    return owner, joiner


async def test_a_cancelled_caller_leaves_the_call_to_those_sharing_it() -> None:
    api, registry = Api(), CollectorRegistry()
    api.release.clear()
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
        enricher = make_enricher(http, registry, TtlCache(ttl_s=0, max_entries=0))
        owner, joiner = await owner_and_joiner(enricher, registry)
        owner.cancel()  # e.g. its partition was revoked
        api.release.set()
        outcome = await joiner
        assert owner.cancelled()
    assert outcome.detections is not None  # the joiner was not cancelled with the owner
    assert api.calls == {"a1": 2}  # it made the call itself


async def test_a_cancelled_joiner_does_not_cancel_the_call_it_shares() -> None:
    api, registry = Api(), CollectorRegistry()
    api.release.clear()
    async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as http:
        enricher = make_enricher(http, registry, TtlCache(ttl_s=0, max_entries=0))
        owner, joiner = await owner_and_joiner(enricher, registry)
        joiner.cancel()
        api.release.set()
        outcome = await owner
        assert joiner.cancelled()
    assert outcome.detections is not None
    assert api.calls == {"a1": 1}
