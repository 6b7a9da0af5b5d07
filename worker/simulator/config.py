"""SimulatorConfig: the one description of how the simulator behaves, checked once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from worker.errors import ConfigError

DEFAULT_TOKEN = "local-simulator-token"  # noqa: S105 - the simulator's well-known dev token

FaultKind = Literal[
    "json_500",
    "json_502",
    "json_503",
    "html_502",
    "html_520",
    "html_521",
    "html_522",
    "html_523",
    "html_524",
    "reset",
    "reset_reused",
    "timeout",
    "truncate",
]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
LatencyDist = Literal["fixed", "uniform", "longtail"]
LATENCY_DISTS: tuple[LatencyDist, ...] = get_args(LatencyDist)


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves. Every field has a flag of ``enrich-worker simulate``.

    Payloads: ``seed`` fixes every id and answer; ``catalog_size`` ids are known (or every id
    with ``accept_any_id``); ``shape_2025_ratio`` of the ids answer in the older schema
    shape; ``null_ratio`` is the chance that a nullable field is null (or an optional one
    absent); ``extra_keys_ratio`` of the ids carry keys the schema does not list; unknown
    ids get code 7003 with ``unknown_status``. Ids share ``payload_variants`` drawn payloads
    per shape, each with its own id spliced into its headers (0: every id its own payload,
    about 70 us per new id instead of a few).

    Rate limit (Cloudflare's): at most ``rate_limit`` calls in any ``rate_window_s``
    (sliding); the call that exceeds it starts a ``lockout_s`` block during which every
    call gets 429 / code 971. ``rate_limit=0`` turns it off.

    Faults: ``fault_rates`` maps a kind to its probability per call (a seeded draw);
    ``fault_by_id`` maps an investigate id to ``"KIND"`` (every call for it) or
    ``"KIND*N"`` (its first N calls). ``slow_s`` is how long a ``timeout`` fault waits;
    ``x_should_retry`` (``"true"``/``"false"``) is sent on every 5xx/52x fault answer.

    Latency: ``latency_dist`` ``fixed`` waits ``latency_s``; ``uniform`` draws from
    [``latency_s``, ``latency_max_s``]; ``longtail`` is log-normal with median
    ``latency_s`` and shape ``latency_sigma``, capped at ``latency_max_s`` (0: no cap).
    ``latency_by_id`` overrides the draw for given ids.

    Search: ``search_202_ratio`` of search calls answer 202 + Location (seeded draw), and
    the first ``search_pending_polls`` calls of each distinct query always do.
    """

    # payloads
    seed: int = 1
    catalog_size: int = 1_000_000
    accept_any_id: bool = False
    shape_2025_ratio: float = 0.2
    null_ratio: float = 0.08
    extra_keys_ratio: float = 0.25
    payload_variants: int = 1024
    unknown_status: int = 404
    # auth
    token: str = DEFAULT_TOKEN
    auth_email: str | None = None
    auth_key: str | None = None
    # rate limit
    rate_limit: int = 1200
    rate_window_s: float = 300.0
    lockout_s: float = 300.0
    ratelimit_headers: bool = True
    # faults
    fault_rates: Mapping[str, float] = field(default_factory=dict)
    fault_by_id: Mapping[str, str] = field(default_factory=dict)
    slow_s: float = 60.0
    x_should_retry: str | None = None
    # latency
    latency_s: float = 0.0
    latency_dist: LatencyDist = "fixed"
    latency_max_s: float = 0.0
    latency_sigma: float = 1.0
    latency_by_id: Mapping[str, float] = field(default_factory=dict)
    # search
    search_202_ratio: float = 0.0
    search_pending_polls: int = 0

    def __post_init__(self) -> None:
        for name in ("shape_2025_ratio", "null_ratio", "extra_keys_ratio", "search_202_ratio"):
            _check(0 <= getattr(self, name) <= 1, name, "must be between 0 and 1")
        _check(self.catalog_size >= 0, "catalog_size", "must be >= 0")
        _check(self.payload_variants >= 0, "payload_variants", "must be >= 0")
        _check(self.unknown_status in (400, 404), "unknown_status", "must be 400 or 404")
        _check(bool(self.token.strip()), "token", "must not be empty")
        _check(
            (self.auth_email is None) == (self.auth_key is None),
            "auth_email",
            "auth_email and auth_key go together",
        )
        _check(self.rate_limit >= 0, "rate_limit", "must be >= 0 (0 turns it off)")
        _check(self.rate_window_s > 0, "rate_window_s", "must be > 0")
        _check(self.lockout_s >= 0, "lockout_s", "must be >= 0")
        for kind, rate in self.fault_rates.items():
            _check(kind in FAULT_KINDS, "fault_rates", f"unknown fault kind {kind!r}")
            _check(0 <= rate <= 1, "fault_rates", f"rate of {kind} must be between 0 and 1")
        _check(
            math.fsum(self.fault_rates.values()) <= 1 + 1e-9,
            "fault_rates",
            "the rates add up to more than 1",
        )
        for investigate_id, spec in self.fault_by_id.items():
            parse_fault_spec(spec, where=f"fault_by_id[{investigate_id!r}]")
        _check(self.slow_s >= 0, "slow_s", "must be >= 0")
        _check(
            self.x_should_retry in (None, "true", "false"),
            "x_should_retry",
            "must be 'true' or 'false'",
        )
        _check(self.latency_dist in LATENCY_DISTS, "latency_dist", f"one of {LATENCY_DISTS}")
        _check(self.latency_s >= 0, "latency_s", "must be >= 0")
        _check(self.latency_max_s >= 0, "latency_max_s", "must be >= 0")
        _check(
            self.latency_dist != "uniform" or self.latency_max_s >= self.latency_s,
            "latency_max_s",
            "must be >= latency_s for the uniform distribution",
        )
        _check(self.latency_sigma >= 0, "latency_sigma", "must be >= 0")
        _check(all(v >= 0 for v in self.latency_by_id.values()), "latency_by_id", ">= 0")
        _check(self.search_pending_polls >= 0, "search_pending_polls", "must be >= 0")


def parse_fault_spec(spec: str, *, where: str = "fault") -> tuple[FaultKind, int | None]:
    """``"KIND"`` -> (kind, None: every call); ``"KIND*N"`` -> (kind, N: the first N calls)."""
    kind, star, count = spec.partition("*")
    _check(kind in FAULT_KINDS, where, f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
    if not star:
        return kind, None  # type: ignore[return-value]  # checked against FAULT_KINDS
    _check(count.isascii() and count.isdigit() and int(count) > 0, where, "N in KIND*N is > 0")
    return kind, int(count)  # type: ignore[return-value]


def _check(ok: bool, name: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"simulator {name}: {problem}")
