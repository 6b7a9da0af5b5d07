"""The fetch path shared by the Kafka pipeline and one-shot mode: request -> Outcome."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from worker.budget import Budget
from worker.cache import TtlCache
from worker.cloudflare.answers import detections_of
from worker.cloudflare.client import Credentials, DetectionsClient, build_http_client
from worker.inputs import EnrichRequest
from worker.observability import Metrics
from worker.retry import Attempts, Outcome, RetryPolicy, Sleep, fetch_with_retry
from worker.settings import CloudflareSettings

HOLD_AUTH = "credentials_refused"
HOLD_RATE_LIMIT = "rate_limited"
HOLD_UNAVAILABLE = "api_unavailable"


@dataclass(frozen=True, slots=True)
class _Cached:
    """A cached success: the answer's JSON body as it came, parsed again on a repeat.

    The body is a few kB where parsed detections are some 15 kB of Python objects; it is not
    compressed, which cost ~40 us of CPU per call for every id, repeated or not, while the
    cache's size is bounded in bytes anyway (``cloudflare.cache_max_bytes``).
    """

    body: bytes
    attempts: Attempts

    def unpack(self) -> Outcome:
        return Outcome(detections=detections_of(self.body), body=self.body, attempts=self.attempts)


_ENTRY_OVERHEAD = 512
"""Bytes an entry costs beyond its body (key, attempts, the cache's own bookkeeping)."""


def _weigh(entry: Outcome | _Cached) -> int:
    return _ENTRY_OVERHEAD + (len(entry.body) if isinstance(entry, _Cached) else 0)


class Enricher:
    """Fetches the detections of a request, with retries, under the shared budget."""

    def __init__(
        self,
        *,
        client: DetectionsClient,
        budget: Budget,
        policy: RetryPolicy,
        metrics: Metrics,
        sleep: Sleep,
        cache: TtlCache[tuple[str, str], Outcome | _Cached] | None = None,
    ) -> None:
        self._client = client
        self._budget = budget
        self._cache: TtlCache[tuple[str, str], Outcome | _Cached] = (
            TtlCache(ttl_s=0, max_entries=0) if cache is None else cache
        )
        self._in_flight: dict[tuple[str, str], asyncio.Future[Outcome]] = {}
        self._policy = policy
        self._metrics = metrics
        self._sleep = sleep

    async def held_for_good(self) -> str:
        """Return HOLD_AUTH or HOLD_UNAVAILABLE once every call is held for that reason.

        A service holds and waits for the fix; one-shot mode, whose caller wants an answer
        now, stops on it instead.
        """
        waits = [
            asyncio.ensure_future(self._client.refused.wait()),
            asyncio.ensure_future(self._client.unavailable.wait()),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return HOLD_AUTH if self._client.credentials_refused else HOLD_UNAVAILABLE

    def hold_reason(self) -> str | None:
        """Why every call is being held right now, or None when calls flow."""
        if self._client.credentials_refused:
            return HOLD_AUTH
        if self._client.api_unavailable:
            return HOLD_UNAVAILABLE
        if self._budget.blocked_for_s > 0:
            return HOLD_RATE_LIMIT
        return None

    async def enrich(self, request: EnrichRequest) -> Outcome:
        """Detections for the request, or the final error with the attempts made.

        The budget is spent once per (account, id): a fresh cached answer is reused, and
        concurrent requests for the same id share one call.
        """
        key = (request.account_id, request.investigate_id)
        while True:
            cached = self._cache.get(key)
            if cached is not None:
                self._metrics.cache_hits.labels(kind="cache").inc()
                return cached.unpack() if isinstance(cached, _Cached) else cached
            shared = self._in_flight.get(key)
            if shared is None:
                break
            self._metrics.cache_hits.labels(kind="shared").inc()
            try:
                # Shielded: a joiner that is cancelled must not cancel the call it shares.
                return await asyncio.shield(shared)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not shared.cancelled() or (task is not None and task.cancelling()):
                    raise  # this joiner itself is cancelled
                # The caller that made the call was cancelled (rebalance, shutdown) and its
                # call with it: look again, and make the call here if still needed.
        # The call runs in this caller's task (no task of its own: that cost ~5 % of the
        # CPU per message); callers of the same id meanwhile wait on this future.
        shared = asyncio.get_running_loop().create_future()
        self._in_flight[key] = shared
        try:
            outcome = await self._fetch(request)
        except BaseException:
            shared.cancel()  # joiners make the call themselves
            raise
        finally:
            del self._in_flight[key]
        shared.set_result(outcome)
        # Successes and permanent answers (e.g. not found) are facts about the id; an
        # exhausted retry is not, and is tried afresh next time.
        if outcome.detections is not None:
            if outcome.body is not None:
                self._cache.put(key, _Cached(outcome.body, outcome.attempts))
        elif outcome.error is not None and not outcome.error.retriable:
            self._cache.put(key, outcome)
        return outcome

    async def _fetch(self, request: EnrichRequest) -> Outcome:
        return await fetch_with_retry(
            lambda: self._client.fetch_answer(request.account_id, request.investigate_id),
            self._policy,
            sleep=self._sleep,
            on_retry=lambda reason: self._metrics.retries.labels(reason=reason).inc(),
        )


@asynccontextmanager
async def open_enricher(
    settings: CloudflareSettings,
    metrics: Metrics,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    budget: Budget | None = None,
    sleep: Sleep | None = None,
) -> AsyncIterator[Enricher]:
    """An Enricher with its HTTP pool, closed on exit."""
    credentials = Credentials.from_settings(settings)
    budget = budget or Budget(calls=settings.effective_budget, window_s=settings.budget_window_s)
    metrics.budget_remaining.set_function(lambda: max(0, budget.remaining()))  # at scrape time
    async with build_http_client(settings, transport) as http:
        client = DetectionsClient(
            base_url=settings.base_url,
            credentials=credentials,
            http=http,
            budget=budget,
            metrics=metrics,
            max_in_flight=settings.max_in_flight,
            default_retry_after_s=settings.default_retry_after_s,
            default_account=settings.account_id,
            auth_retry_s=settings.backoff_max_s,
            reserve=settings.budget_calls - settings.effective_budget,
            min_in_flight=settings.min_in_flight,
        )
        policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            base_s=settings.backoff_base_s,
            cap_s=settings.backoff_max_s,
            max_age_s=settings.max_retry_age_s,
        )
        yield Enricher(
            client=client,
            budget=budget,
            policy=policy,
            metrics=metrics,
            sleep=sleep or asyncio.sleep,
            cache=TtlCache(
                ttl_s=settings.cache_ttl_s,
                max_entries=settings.cache_max_entries,
                max_bytes=settings.cache_max_bytes,
                weigh=_weigh,
            ),
        )
