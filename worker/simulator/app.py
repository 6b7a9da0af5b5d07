"""The simulated Cloudflare API: routing, auth, rate limit, faults, latency and counters.

Routes, under ``/client/v4``:

- ``GET /accounts/{account}/email-security/investigate/{id}/detections``: the detections
  of a catalogue id, or 7003 with ``unknown_status``;
- ``GET /accounts/{account}/email-security/investigate``: the search call, listing the
  catalogue in order with cursor paging (``per_page``, ``cursor``; the deprecated ``page``
  works too), or 202 + ``Location`` when the search "takes longer";
- ``GET /__simulator/stats`` (its counters) and ``GET|POST /__simulator/reset`` (zero them,
  with the rate limit, the fault draws and the ``KIND*N`` counts). Neither is rate limited.

Every other call under ``/client/v4`` passes the rate limiter first, then a possible fault,
then auth. The zero-latency path answers synchronously with cached bytes (see
worker.httpserver: a ready Response needs no task).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import orjson

from worker.httpserver import Request, Response
from worker.simulator import catalog
from worker.simulator.config import FaultKind, SimulatorConfig
from worker.simulator.faults import FaultPlan, LatencySampler, ray_id, status_fault
from worker.simulator.ratelimit import RateLimiter

API_PREFIX = "/client/v4"
MAX_PER_PAGE = 1000
_API = API_PREFIX + "/"
_HEX = frozenset("0123456789abcdef")
_RESET_NEXT = "reset_next"
_PAYLOAD_FIELDS = ("seed", "shape_2025_ratio", "null_ratio", "extra_keys_ratio", "payload_variants")


class Simulator:
    """Request handler of the simulated API; plug it into worker.httpserver.serve.

    ``config`` may be replaced while serving (``sim.config = dataclasses.replace(...)``):
    counters, the rate limiter's count and a running lockout are kept.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sleep = sleep
        self._clock = clock
        self._config = config
        self._limiter = RateLimiter(
            limit=config.rate_limit,
            window_s=config.rate_window_s,
            lockout_s=config.lockout_s,
            clock=clock,
            headers=config.ratelimit_headers,
        )
        self._bodies: catalog.Bodies | None = None
        self._body = lru_cache(maxsize=4096)(self._detections_bytes)
        self.reset()

    # --- configuration and counters ---------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        """How the simulator behaves now."""
        return self._config

    @config.setter
    def config(self, config: SimulatorConfig) -> None:
        old, self._config = self._config, config
        self._limiter.reconfigure(
            limit=config.rate_limit,
            window_s=config.rate_window_s,
            lockout_s=config.lockout_s,
            headers=config.ratelimit_headers,
        )
        self._faults = FaultPlan(config)
        self._latency = LatencySampler(config)
        self._search_rng = random.Random(f"search:{config.seed}")  # noqa: S311 - test data
        if self._bodies is None or any(
            getattr(old, f) != getattr(config, f) for f in _PAYLOAD_FIELDS
        ):
            self._bodies = catalog.Bodies(
                seed=config.seed,
                shape_2025_ratio=config.shape_2025_ratio,
                null_ratio=config.null_ratio,
                extra_keys_ratio=config.extra_keys_ratio,
                variants=config.payload_variants,
            )
            self._body.cache_clear()

    def reset(self) -> None:
        """Zero the counters, forget the rate limit's count and lockout, restart the draws."""
        self.requests_total = 0
        self.requests_by_status: Counter[str] = Counter()
        self.requests_by_route: Counter[str] = Counter()
        self.rate_limited_total = 0
        self.lockouts_triggered = 0
        self.faults_by_kind: Counter[str] = Counter()
        self.answered_ids: Counter[str] = Counter()
        self._search_polls: Counter[str] = Counter()
        self._limiter.reset()
        self.config = self._config  # fresh fault plan, latency and search draws

    def lock_out(self) -> None:
        """Block every call for ``lockout_s``, as when another tool of the same user went
        over the limit. Not counted in ``lockouts_triggered``, which counts only the
        lockouts that calls to this simulator caused."""
        self._limiter.block()

    def stats(self) -> dict[str, Any]:
        """The counters, as served by /__simulator/stats.

        ``requests_total`` counts calls received under /client/v4; ``requests_by_status``
        counts answers sent, by HTTP status, or ``reset`` / ``truncate`` for the ones cut.
        """
        return {
            "requests_total": self.requests_total,
            "requests_by_status": dict(sorted(self.requests_by_status.items())),
            "requests_by_route": dict(sorted(self.requests_by_route.items())),
            "rate_limited_total": self.rate_limited_total,
            "lockouts_triggered": self.lockouts_triggered,
            "locked_out": self._clock() < self._limiter.blocked_until,
            "faults_by_kind": dict(sorted(self.faults_by_kind.items())),
            "unique_ids_answered": len(self.answered_ids),
        }

    # --- one request ----------------------------------------------------------------------

    def __call__(self, request: Request) -> Awaitable[Response]:
        """Answer one request: a ready Response, or a coroutine when it must wait first."""
        raw_path = request.raw_path
        if not raw_path.startswith(_API):
            if raw_path.startswith("/__simulator/"):
                return self._admin(request)
            return _error(404, 7003, "No route for the URI")
        self.requests_total += 1
        if request.connection.note == _RESET_NEXT:
            # The stale keep-alive race: this connection was "closed" by the server just
            # as the client reused it, so this request is never answered.
            return self._finish(Response(fault="reset"), None)
        route, account, investigate_id = _route(raw_path)
        self.requests_by_route[route] += 1
        verdict = self._limiter.check()
        if not verdict.allowed:
            self.rate_limited_total += 1
            self.lockouts_triggered += verdict.started_lockout
            response = _error(429, 971, "Rate limited: too many requests, wait before retrying")
            response.headers.extend(verdict.headers)
            return self._finish(response, None)
        kind: FaultKind | None = None
        if route != "other" and request.method == "GET":
            kind = self._faults.pick(investigate_id)
        delay = self._latency.delay(investigate_id)
        if kind is not None:
            self.faults_by_kind[kind] += 1
            response = self._fault(kind, request, route, account, investigate_id)
            if kind == "timeout":
                delay = max(delay, self._config.slow_s)
        else:
            response = self._answer(request, route, account, investigate_id)
        response.headers.extend(verdict.headers)
        answered = investigate_id if response.status == 200 and route == "detections" else None
        if delay > 0:
            return self._later(response, answered, delay)
        return self._finish(response, answered)

    def _finish(self, response: Response, answered: str | None) -> Response:
        if response.fault is None:
            self.requests_by_status[str(response.status)] += 1
            if answered is not None:
                self.answered_ids[answered] += 1
        else:
            self.requests_by_status[response.fault] += 1
        return response

    async def _later(self, response: Response, answered: str | None, delay: float) -> Response:
        await self._sleep(delay)
        return self._finish(response, answered)

    def _fault(
        self,
        kind: FaultKind,
        request: Request,
        route: str,
        account: str,
        investigate_id: str | None,
    ) -> Response:
        if kind == "reset":
            return Response(fault="reset")
        if kind == "reset_reused":
            if request.sequence > 1:
                return Response(fault="reset")
            request.connection.note = _RESET_NEXT
            return self._answer(request, route, account, investigate_id)
        if kind in ("timeout", "truncate"):
            response = self._answer(request, route, account, investigate_id)
            if kind == "truncate":
                response.fault = "truncate"
            return response
        ray = ray_id(f"{self._config.seed}:{self.requests_total}")
        answer = status_fault(kind, ray)
        assert answer is not None, kind
        status, body, content_type = answer
        response = Response(status=status, body=body, content_type=content_type)
        if content_type.startswith("text/html"):
            response.headers += [("server", "cloudflare"), ("cf-ray", ray)]
        if self._config.x_should_retry is not None:
            response.headers.append(("x-should-retry", self._config.x_should_retry))
        return response

    def _answer(
        self, request: Request, route: str, account: str, investigate_id: str | None
    ) -> Response:
        if request.method != "GET":
            return _error(405, 7001, "Method not allowed for this route")
        if route == "other":
            return _error(404, 7003, "No route for the URI")
        denied = self._check_auth(request.headers)
        if denied is not None:
            return denied
        if len(account) != 32 or not _HEX.issuperset(account):
            return _error(
                400,
                7003,
                "Could not route to /accounts/..., perhaps your object identifier is invalid?",
            )
        if route == "search":
            return self._search(request)
        assert investigate_id is not None
        if not self._knows(investigate_id):
            return _error(self._config.unknown_status, 7003, "No route for the URI")
        return Response(body=self._body(investigate_id))

    # --- detections -----------------------------------------------------------------------

    def _knows(self, investigate_id: str) -> bool:
        cfg = self._config
        return cfg.accept_any_id or catalog.is_catalog_id(
            cfg.seed, investigate_id, cfg.catalog_size
        )

    def _detections_bytes(self, investigate_id: str) -> bytes:
        assert self._bodies is not None
        return self._bodies.body(investigate_id)

    # --- search ---------------------------------------------------------------------------

    def _search(self, request: Request) -> Response:
        cfg = self._config
        query = request.query
        per_page = _int_param(query.get("per_page", "20"), 1, MAX_PER_PAGE)
        if per_page is None:
            return _error(400, 10001, f"per_page must be an integer from 1 to {MAX_PER_PAGE}")
        if "cursor" in query:
            start = catalog.decode_cursor(query["cursor"], cfg.seed)
            if start is None:
                return _error(400, 10001, "Invalid cursor")
        elif "page" in query:  # deprecated page numbers (until November 2026)
            page = _int_param(query["page"], 1, 10**9)
            if page is None:
                return _error(400, 10001, "page must be an integer >= 1")
            start = (page - 1) * per_page
        else:
            start = 0
        if self._search_pending(request):
            return self._search_accepted(request, per_page)
        end = min(start + per_page, cfg.catalog_size)
        assert self._bodies is not None
        items = []
        for index in range(start, end):
            investigate_id = catalog.catalog_id(cfg.seed, index)
            items.append(catalog.search_item(investigate_id, self._bodies.document(investigate_id)))
        info = {
            "per_page": per_page,
            "count": len(items),
            "total_count": 0,  # deprecated: always 0
            "page": 0,  # deprecated: always 0
            "next": catalog.encode_cursor(end, cfg.seed) if end < cfg.catalog_size else None,
            "previous": catalog.encode_cursor(max(0, start - per_page), cfg.seed)
            if start
            else None,
        }
        body = {"result": items, "result_info": info, "success": True, "errors": [], "messages": []}
        return Response(body=orjson.dumps(body))

    def _search_pending(self, request: Request) -> bool:
        cfg = self._config
        if cfg.search_pending_polls:
            key = request.query_string
            if len(self._search_polls) > 100_000:
                self._search_polls.clear()
            self._search_polls[key] += 1
            if self._search_polls[key] <= cfg.search_pending_polls:
                return True
        return cfg.search_202_ratio > 0 and self._search_rng.random() < cfg.search_202_ratio

    def _search_accepted(self, request: Request, per_page: int) -> Response:
        target = request.raw_path + (f"?{request.query_string}" if request.query_string else "")
        host = request.headers.get("host")
        location = f"http://{host}{target}" if host else target
        info = {"per_page": per_page, "count": 0, "total_count": 0, "next": None}
        body = {"result": [], "result_info": info, "success": True, "errors": [], "messages": []}
        return Response(status=202, body=orjson.dumps(body), headers=[("location", location)])

    # --- auth and admin -------------------------------------------------------------------

    def _check_auth(self, headers: dict[str, str]) -> Response | None:
        cfg = self._config
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme != "Bearer" or not token:
                return _error(
                    400,
                    6003,
                    "Invalid request headers",
                    chain=(6111, "Invalid format for Authorization header"),
                )
            if token != cfg.token:
                return _error(403, 10000, "Authentication error")
            return None
        email, key = headers.get("x-auth-email"), headers.get("x-auth-key")
        if email is None and key is None:
            return _error(
                400,
                6003,
                "Invalid request headers",
                chain=(6103, "Invalid format for X-Auth-Key header"),
            )
        if email is None or key is None or "@" not in email:
            return _error(
                400,
                6003,
                "Invalid request headers",
                chain=(6102, "Invalid format for X-Auth-Email header"),
            )
        if cfg.auth_email is None or (email, key) != (cfg.auth_email, cfg.auth_key):
            return _error(403, 10000, "Authentication error")
        return None

    def _admin(self, request: Request) -> Response:
        if request.path == "/__simulator/stats" and request.method == "GET":
            return Response(body=orjson.dumps(self.stats()))
        if request.path == "/__simulator/lockout" and request.method in ("GET", "POST"):
            self.lock_out()
            return Response(body=orjson.dumps(self.stats()))
        if request.path == "/__simulator/reset" and request.method in ("GET", "POST"):
            self.reset()
            return Response(body=orjson.dumps(self.stats()))
        return Response(status=404, body=b'{"error":"unknown simulator endpoint"}')


def _route(raw_path: str) -> tuple[str, str, str | None]:
    """(route, account, investigate id) of a path under the API prefix."""
    parts = raw_path[len(_API) :].split("/")
    if (
        len(parts) >= 4
        and parts[0] == "accounts"
        and parts[2:4] == ["email-security", "investigate"]
    ):
        if len(parts) == 4:
            return "search", parts[1], None
        if len(parts) == 6 and parts[5] == "detections":
            segment = parts[4]
            return "detections", parts[1], unquote(segment) if "%" in segment else segment
    return "other", "", None


def _int_param(value: str, low: int, high: int) -> int | None:
    if not (value.isascii() and value.isdigit()):
        return None
    number = int(value)
    return number if low <= number <= high else None


def hash_fraction(seed: int, investigate_id: str) -> float:
    """The number in [0, 1) that decides the schema shape of an id (below the 2025 ratio)."""
    return catalog.id_fraction(seed, investigate_id)


def _error(
    status: int, code: int, message: str, *, chain: tuple[int, str] | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if chain is not None:
        error["error_chain"] = [{"code": chain[0], "message": chain[1]}]
    body = {"result": None, "success": False, "errors": [error], "messages": []}
    return Response(status=status, body=orjson.dumps(body))
