"""One attempt at the detections call: safe URL, auth headers, budget, concurrency, metrics.

Retries are not decided here (see worker.retry); this module turns every httpx outcome into
Detections or an ApiError, so no httpx exception escapes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from worker import __version__
from worker.budget import Budget
from worker.cloudflare.answers import Answer, parse_answer, parse_ratelimit
from worker.cloudflare.models import Detections
from worker.cloudflare.request_builder import RequestBuilder
from worker.cloudflare.transport import AsyncioTransport, DeadlineWatch
from worker.concurrency import AdaptiveLimit
from worker.errors import (
    AccountForbiddenError,
    ApiError,
    ApiUnavailableError,
    AuthError,
    RateLimitedError,
    TransientApiError,
)
from worker.inputs import validate_account_id, validate_investigate_id
from worker.observability import Metrics
from worker.settings import CloudflareSettings

log = logging.getLogger(__name__)

DEFAULT_HEADERS = {"user-agent": f"enrich-worker/{__version__}", "accept-encoding": "gzip, deflate"}
"""Sent with every call (httpx's client would add its own user-agent; ours names the tool)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A Bearer token (preferred) or the legacy X-Auth-Email + X-Auth-Key pair."""

    token: SecretStr | None = None
    email: str | None = None
    key: SecretStr | None = None

    @classmethod
    def from_settings(cls, settings: CloudflareSettings) -> Credentials:
        """Take the credentials out of the settings (they were checked there)."""
        settings.require_credentials()
        return cls(token=settings.api_token, email=settings.auth_email, key=settings.auth_key)

    def headers(self) -> dict[str, str]:
        """The auth headers of every call."""
        if self.token is not None:
            return {"authorization": f"Bearer {self.token.get_secret_value()}"}
        if self.email is not None and self.key is not None:
            return {"x-auth-email": self.email, "x-auth-key": self.key.get_secret_value()}
        return {}


def detections_path(account_id: str, investigate_id: str) -> str:
    """The detections path under the base URL; the id is validated again and becomes exactly
    one percent-encoded path segment."""
    segment = quote(validate_investigate_id(investigate_id), safe=":@")
    account = validate_account_id(account_id)
    return f"/accounts/{account}/email-security/investigate/{segment}/detections"


def detections_url(base_url: str, account_id: str, investigate_id: str) -> str:
    """The detections URL (see ``detections_path``)."""
    return base_url.rstrip("/") + detections_path(account_id, investigate_id)


class DetectionsClient:
    """Fetches detections, one attempt per call, under the shared budget."""

    def __init__(
        self,
        *,
        base_url: str,
        credentials: Credentials,
        http: httpx.AsyncClient | HttpPool,
        budget: Budget,
        metrics: Metrics,
        max_in_flight: int,
        default_retry_after_s: float = 300.0,
        auth_retry_s: float = 60.0,
        reserve: int = 0,
        min_in_flight: int = 1,
        outage_after: int = 25,
        default_account: str | None = None,
    ) -> None:
        self._requests = RequestBuilder(
            base_url, {**DEFAULT_HEADERS, "accept": "application/json", **credentials.headers()}
        )
        self._http = http
        self._budget = budget
        self._metrics = metrics
        self._slots = AdaptiveLimit(
            minimum=min(min_in_flight, max_in_flight),
            maximum=max_in_flight,
            on_change=metrics.concurrency_limit.set,
        )
        self._default_retry_after_s = default_retry_after_s
        self._auth_retry_s = auth_retry_s
        self._reserve = reserve
        self._auth_logged_at = -auth_retry_s
        self.refused = asyncio.Event()
        """Set from a refused-credentials answer until any other answer arrives (a service
        holds every call meanwhile; one-shot mode stops on it)."""
        self.unavailable = asyncio.Event()
        """Set after ``outage_after`` transient failures in a row, until a call succeeds (a
        service holds every call meanwhile; one-shot mode stops on it)."""
        self._failures_in_a_row = 0
        self._outage_after = outage_after
        self._default_account = default_account

    async def fetch(self, account_id: str, investigate_id: str) -> Detections:
        """One call. Returns the detections or raises an ApiError subclass."""
        return (await self.fetch_answer(account_id, investigate_id)).detections

    async def fetch_answer(self, account_id: str, investigate_id: str) -> Answer:
        """One call. Returns the detections with the body they came from, or raises."""
        try:
            answer = await self._call(account_id, investigate_id)
        except ApiError as exc:
            for code in exc.codes:
                self._metrics.api_error(code)
            raise self._account_wide(exc, account_id) from None
        self._calls_flow()
        return answer

    async def _call(self, account_id: str, investigate_id: str) -> Answer:
        request = self._requests.get(detections_path(account_id, investigate_id))
        async with self._slots:
            call = await self._budget.reserve()
            if call.waited:
                self._metrics.budget_wait.inc(call.waited)
            self._metrics.api_in_flight.inc()
            started = time.perf_counter()
            try:
                response = await self._http.send(request)
            except httpx.TimeoutException as exc:
                self._slots.struggled()
                self._metrics.api_requests.labels(status="timeout").inc()
                raise TransientApiError(f"timeout: {type(exc).__name__}") from None
            except httpx.RequestError as exc:  # transport errors, undecodable bodies
                self._slots.struggled()
                self._metrics.api_requests.labels(status="transport_error").inc()
                raise TransientApiError(f"transport error: {type(exc).__name__}") from None
            finally:
                self._budget.settle(call)
                self._metrics.api_in_flight.dec()
            self._metrics.api_latency.observe(time.perf_counter() - started)
            server = parse_ratelimit(response.headers.get("ratelimit"))
            # A 429's figure says the account is blocked, not how many calls it counted.
            if server is not None and response.status_code != 429:
                remaining, _ = server
                self._budget.observe_server_remaining(remaining, call=call, reserve=self._reserve)
            self._metrics.api_requests.labels(status=str(response.status_code)).inc()
            if response.status_code >= 500 or response.status_code in (408, 429):
                self._slots.struggled()
            else:
                self._slots.succeeded()
        body = response.content
        detections = parse_answer(
            response.status_code,
            response.headers,
            body,
            default_retry_after_s=self._default_retry_after_s,
        )
        return Answer(detections, body)

    def _account_wide(self, exc: ApiError, account_id: str) -> ApiError:
        """Turn what one failed call says about the whole account into a hold of all calls."""
        if isinstance(exc, AuthError):
            if self._default_account is not None and account_id != self._default_account:
                # Our token works for our account but not this message's: its fault alone.
                return AccountForbiddenError(exc.detail, status=exc.status, codes=exc.codes)
            self.refused.set()
            # No call can succeed: hold all of them, so that a bad token costs a round of
            # probes (at most max_in_flight) per interval, not the whole budget.
            self._hold("Cloudflare refused the credentials; holding every message until "
                       "they work (fix the token or its permission 'Cloud Email Security: "
                       "Read')", exc)  # fmt: skip
            return exc
        self.refused.clear()
        if isinstance(exc, RateLimitedError):
            # The whole account is blocked: hold every call, not only this one.
            wait = self._default_retry_after_s if exc.retry_after_s is None else exc.retry_after_s
            if self._budget.blocked_for_s <= 0:
                self._metrics.lockouts.inc()  # a new lockout, not a call caught in one
            self._budget.block_for(max(1.0, wait))
            return exc
        if not isinstance(exc, TransientApiError):
            self._failures_in_a_row = 0
            self.unavailable.clear()
            return exc
        self._failures_in_a_row += 1
        if self._failures_in_a_row < self._outage_after:
            return exc
        # So many calls in a row failed that the API (or the path to it) is down: hold
        # every call instead of spending each message's attempts and sending it to the DLQ.
        self.unavailable.set()
        self._hold(f"Cloudflare API unavailable ({self._failures_in_a_row} failed calls in a "
                   "row); holding every message until it answers (check base_url and the "
                   "network if this lasts)", exc)  # fmt: skip
        return ApiUnavailableError(exc.detail, status=exc.status, codes=exc.codes)

    def _hold(self, message: str, exc: ApiError) -> None:
        self._budget.block_for(self._auth_retry_s)
        now = time.monotonic()
        if now - self._auth_logged_at >= self._auth_retry_s:
            self._auth_logged_at = now
            log.error(message, extra={"status": exc.status, "codes": list(exc.codes)})

    @property
    def credentials_refused(self) -> bool:
        """True while Cloudflare refuses the credentials (see ``refused``)."""
        return self.refused.is_set()

    @property
    def api_unavailable(self) -> bool:
        """True while the API looks down (see ``unavailable``)."""
        return self.unavailable.is_set()

    def _calls_flow(self) -> None:
        self.refused.clear()
        self.unavailable.clear()
        self._failures_in_a_row = 0


CONNECTIONS_PER_POOL = 4
"""Connections of one httpcore pool. httpcore's pool does work quadratic in its connections on
every request and every answer (it checks the state of each connection): at 16 connections in
one pool that work was most of the worker's CPU per call (bench/README.md). Several small
pools make the same connections cost a fraction of it."""


class HttpPool:
    """A few small httpx transports that share the calls; each call goes to the least busy one.

    Its capacity is the sum of the transports' pools, so while fewer calls than that are in
    flight (the DetectionsClient's concurrency bound sees to it) a call never waits for a
    connection. Calls go to the transports directly: the worker uses nothing that
    ``httpx.AsyncClient`` adds on top (cookies, redirects, auth flows, hooks), and skipping
    it saves about a fifth of a call's CPU (bench/README.md).
    """

    def __init__(
        self,
        transports: list[tuple[httpx.AsyncBaseTransport, int]],
        *,
        timeout: httpx.Timeout,
        total_timeout_s: float,
    ) -> None:
        if not transports:
            raise ValueError("an HttpPool needs at least one transport")
        self._transports = [transport for transport, _ in transports]
        self._free = [size for _, size in transports]
        self._extensions = {"timeout": timeout.as_dict()}
        self._deadlines = Deadlines(total_timeout_s)

    async def send(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the whole answer, within the pool's timeouts.

        Raises what httpx raises; a call that outlasts the whole-call timeout (an answer
        that trickles in, each read inside the read timeout) raises ``httpx.ReadTimeout``.
        """
        index = max(range(len(self._free)), key=self._free.__getitem__)
        request.extensions = self._extensions  # the pool's timeouts, whoever built it
        self._free[index] -= 1
        try:
            async with self._deadlines.apply():
                response = await self._transports[index].handle_async_request(request)
                try:
                    await _read_capped(response, request)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(
                f"no whole answer within {self._deadlines.timeout_s} s", request=request
            ) from None
        finally:
            self._free[index] += 1
        response.request = request
        return response

    async def aclose(self) -> None:
        """Close every transport (and its connections)."""
        for transport in self._transports:
            await transport.aclose()

    async def __aenter__(self) -> HttpPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Deadlines:
    """A whole-call timeout for many concurrent calls, kept by one periodic check.

    ``async with deadlines.apply():`` raises TimeoutError in the calling task past
    ``timeout_s``, as ``asyncio.timeout`` does, but without a timer per call: the task's
    deadline goes to a DeadlineWatch, which cancels it when late. A call is stopped between
    its deadline and a second (a quarter of the timeout, if shorter) later.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.watch: DeadlineWatch[asyncio.Task[Any]] = DeadlineWatch(_cancel)

    def apply(self) -> _Deadline:
        """``async with deadlines.apply():`` raises TimeoutError past ``timeout_s``."""
        return _Deadline(self)


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()


class _Deadline:
    """One call's use of Deadlines (a class, not a generator: this runs for every call)."""

    __slots__ = ("_cancelling", "_deadlines", "_task")

    def __init__(self, deadlines: Deadlines) -> None:
        self._deadlines = deadlines
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._cancelling = 0

    async def __aenter__(self) -> None:
        self._cancelling = self._task.cancelling()
        self._deadlines.watch.watch(self._task, self._deadlines.timeout_s)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if not self._deadlines.watch.forget(self._task):
            return
        # The check cancelled this task: a timeout, unless somebody else cancelled it too.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from None


MAX_ANSWER_BYTES = 4 * 1024 * 1024
"""Largest answer body read (after decompression). A detections answer is a few kB; a wrong
base_url or a broken proxy could send without end, and memory must stay bounded."""


async def _read_capped(response: httpx.Response, request: httpx.Request) -> None:
    """Read the body into ``response.content``, or raise past MAX_ANSWER_BYTES."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        size += len(part)
        if size > MAX_ANSWER_BYTES:
            # A transport error to the caller: retried, then retries_exhausted.
            raise httpx.RemoteProtocolError(
                f"answer larger than {MAX_ANSWER_BYTES} bytes", request=request
            )
        parts.append(part)
    response._content = b"".join(parts)  # what Response.aread() stores


def build_http_client(
    settings: CloudflareSettings, transport: httpx.AsyncBaseTransport | None = None
) -> HttpPool:
    """The shared HTTP pool: max_in_flight connections in all, strict timeouts.

    The connections are split over AsyncioTransports of at most CONNECTIONS_PER_POOL each;
    a given ``transport`` (tests) has one pool of its own, so it is used alone.
    """
    total = settings.max_in_flight
    count = 1 if transport is not None else -(-total // CONNECTIONS_PER_POOL)
    # One TLS context for all: each loads the system's CA certificates (~18 ms), which made
    # the start take seconds with a large max_in_flight.
    tls = httpx.create_ssl_context(trust_env=False)
    sizes = [total // count + (1 if i < total % count else 0) for i in range(count)]
    transports: list[tuple[httpx.AsyncBaseTransport, int]] = [
        (
            transport
            or AsyncioTransport(
                limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                verify=tls,
            ),
            size,
        )
        for size in sizes
    ]
    return HttpPool(
        transports,
        timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
        total_timeout_s=settings.timeout_s,
    )
