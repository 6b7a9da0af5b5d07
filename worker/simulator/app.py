"""The simulated Cloudflare API: routing, auth, envelopes, latency, and its own counters.

It answers ``GET {prefix}/accounts/{account}/email-security/investigate/{id}/detections``
like Cloudflare does, and ``GET /__simulator/stats`` with its counters (tests and
benchmarks read them, e.g. to assert that no call was rate limited).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

import orjson

from worker.httpserver import Request, Response
from worker.simulator import payloads

DEFAULT_TOKEN = "local-simulator-token"  # noqa: S105 - the simulator's well-known dev token
API_PREFIX = "/client/v4"
_ACCOUNT = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves. Every field has a CLI flag (``enrich-worker simulate``)."""

    seed: int = 1
    catalog_size: int = 1_000_000
    accept_any_id: bool = False
    shape_2025_ratio: float = 0.2
    token: str = DEFAULT_TOKEN
    auth_email: str | None = None
    auth_key: str | None = None
    latency_s: float = 0.0
    latency_by_id: Mapping[str, float] = field(default_factory=dict)
    unknown_status: int = 404


class Simulator:
    """Request handler of the simulated API; plug it into worker.httpserver.serve."""

    def __init__(
        self,
        config: SimulatorConfig,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self._sleep = sleep
        self.requests_by_status: Counter[int] = Counter()
        self.answered_ids: Counter[str] = Counter()
        self.started_ids: Counter[str] = Counter()
        self._body = lru_cache(maxsize=8192)(self._detections_body)

    def stats(self) -> dict[str, Any]:
        """The counters, as served by /__simulator/stats."""
        return {
            "requests_total": sum(self.requests_by_status.values()),
            "requests_by_status": {str(k): v for k, v in sorted(self.requests_by_status.items())},
            "rate_limited_total": self.requests_by_status.get(429, 0),
            "unique_ids_answered": len(self.answered_ids),
        }

    async def __call__(self, request: Request) -> Response:
        """Answer one request."""
        if request.path == "/__simulator/stats":
            return Response(body=orjson.dumps(self.stats()))
        response = await self._route(request)
        self.requests_by_status[response.status] += 1
        return response

    async def _route(self, request: Request) -> Response:
        if request.method != "GET":
            return _error(405, 7001, "Method not allowed for this route")
        if not request.raw_path.startswith(API_PREFIX + "/"):
            return _error(404, 7003, "No route for the URI")
        parts = request.raw_path[len(API_PREFIX) + 1 :].split("/")
        # accounts/{account}/email-security/investigate/{id}/detections
        if (
            len(parts) != 6
            or parts[0] != "accounts"
            or parts[2:4] != ["email-security", "investigate"]
            or parts[5] != "detections"
        ):
            return _error(404, 7003, "No route for the URI")
        denied = self._check_auth(request.headers)
        if denied is not None:
            return denied
        account, investigate_id = parts[1], unquote(parts[4])
        if not _ACCOUNT.match(account):
            return _error(
                400,
                7003,
                "Could not route to /accounts/..., perhaps your object identifier is invalid?",
            )
        self.started_ids[investigate_id] += 1
        delay = self.config.latency_by_id.get(investigate_id, self.config.latency_s)
        if delay > 0:
            await self._sleep(delay)
        if not self._knows(investigate_id):
            return _error(self.config.unknown_status, 7003, "No route for the URI")
        self.answered_ids[investigate_id] += 1
        return Response(body=self._body(investigate_id))

    def _knows(self, investigate_id: str) -> bool:
        cfg = self.config
        return cfg.accept_any_id or payloads.is_catalog_id(
            cfg.seed, investigate_id, cfg.catalog_size
        )

    def _detections_body(self, investigate_id: str) -> bytes:
        cfg = self.config
        # The shape is a property of the id, like a message stored before or after a change.
        shape_2025 = hash_fraction(cfg.seed, investigate_id) < cfg.shape_2025_ratio
        result = payloads.detections(cfg.seed, investigate_id, shape_2025=shape_2025)
        return orjson.dumps({"result": result, "success": True, "errors": [], "messages": []})

    def _check_auth(self, headers: Mapping[str, str]) -> Response | None:
        cfg = self.config
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme != "Bearer" or not token.strip():
                return _error(
                    400,
                    6003,
                    "Invalid request headers",
                    chain=(6111, "Invalid format for Authorization header"),
                )
            if token.strip() != cfg.token:
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


def hash_fraction(seed: int, investigate_id: str) -> float:
    """A stable number in [0, 1) for (seed, id), for choices that are a property of the id."""
    digest = hashlib.blake2b(f"{seed}:{investigate_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _error(
    status: int, code: int, message: str, *, chain: tuple[int, str] | None = None
) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if chain is not None:
        error["error_chain"] = [{"code": chain[0], "message": chain[1]}]
    body = {"result": None, "success": False, "errors": [error], "messages": []}
    return Response(status=status, body=orjson.dumps(body))
