"""Faults and latency: which call misbehaves (by rate or by id), how, and how slowly.

Kinds and what the client sees on the wire:

- ``json_500`` / ``json_502`` / ``json_503``: that status, Cloudflare's JSON error envelope.
- ``html_502``, ``html_520`` ... ``html_524``: that status, ``text/html``, a small error page
  like the ones Cloudflare's edge serves when the origin misbehaves.
- ``reset``: the connection is aborted with a TCP RST before any byte of the answer.
- ``reset_reused``: on a fresh connection the call is answered normally and the connection
  is marked; the *next* request that arrives on it is aborted (RST) unanswered: the stale
  keep-alive race. A call that is already on a reused connection is aborted at once.
- ``timeout``: the normal answer, after ``slow_s`` seconds (longer than a client timeout).
- ``truncate``: the head announces the full ``content-length``, half the body is sent,
  then the connection is closed.

Every draw uses a ``random.Random`` seeded from the simulator's seed, so a given seed gives
the same sequence of faults and latencies for the same sequence of calls.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Mapping

import orjson

from worker.simulator.config import FaultKind, SimulatorConfig, parse_fault_spec


class FaultPlan:
    """Picks the fault of each call: ``fault_by_id`` first, then one draw over the rates."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._rng = random.Random(f"faults:{config.seed}")  # noqa: S311 - test data
        self._by_id: dict[str, tuple[FaultKind, int | None]] = {
            investigate_id: parse_fault_spec(spec)
            for investigate_id, spec in config.fault_by_id.items()
        }
        self._rates: list[tuple[float, FaultKind]] = []
        total = 0.0
        for kind, rate in config.fault_rates.items():
            if rate > 0:
                total += rate
                self._rates.append((total, kind))  # type: ignore[arg-type]  # config checked it

    def pick(self, investigate_id: str | None) -> FaultKind | None:
        """The fault for this call, or None; counts down ``KIND*N`` entries."""
        if investigate_id is not None and self._by_id:
            entry = self._by_id.get(investigate_id)
            if entry is not None:
                kind, left = entry
                if left is None:
                    return kind
                if left > 0:
                    self._by_id[investigate_id] = (kind, left - 1)
                    return kind
        if not self._rates:
            return None
        draw = self._rng.random()
        for bound, kind in self._rates:
            if draw < bound:
                return kind
        return None


class LatencySampler:
    """Draws the added latency of each call from the configured distribution."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._rng = random.Random(f"latency:{config.seed}")  # noqa: S311 - test data
        self._by_id: Mapping[str, float] = config.latency_by_id
        self._dist = config.latency_dist
        self._base = config.latency_s
        self._max = config.latency_max_s
        self._sigma = config.latency_sigma
        self._mu = math.log(config.latency_s) if config.latency_s > 0 else 0.0

    def delay(self, investigate_id: str | None) -> float:
        """Seconds to wait before answering this call."""
        if investigate_id is not None and self._by_id:
            fixed = self._by_id.get(investigate_id)
            if fixed is not None:
                return fixed
        if self._dist == "uniform":
            return self._rng.uniform(self._base, self._max)
        if self._dist == "fixed" or self._base <= 0:
            return self._base
        value = self._rng.lognormvariate(self._mu, self._sigma)
        return min(value, self._max) if self._max > 0 else value


# --- fault answers ----------------------------------------------------------------------------

_JSON_FAULTS = {
    "json_500": (500, 10001, "Internal server error"),
    "json_502": (502, 10002, "Bad gateway: the upstream service did not answer"),
    "json_503": (503, 10003, "Service temporarily unavailable, please retry"),
}
_HTML_TITLES = {
    502: "Bad gateway",
    520: "Web server is returning an unknown error",
    521: "Web server is down",
    522: "Connection timed out",
    523: "Origin is unreachable",
    524: "A timeout occurred",
}


def status_fault(kind: FaultKind, ray: str) -> tuple[int, bytes, str] | None:
    """(status, body, content type) for the kinds that are an HTTP answer, else None."""
    json_fault = _JSON_FAULTS.get(kind)
    if json_fault is not None:
        status, code, message = json_fault
        body = {
            "result": None,
            "success": False,
            "errors": [{"code": code, "message": message}],
            "messages": [],
        }
        return status, orjson.dumps(body), "application/json"
    if kind.startswith("html_"):
        status = int(kind[5:])
        return status, html_error_page(status, ray), "text/html; charset=UTF-8"
    return None


def ray_id(seed: str) -> str:
    """A Cloudflare-style ray id (16 hex digits and a colo code), stable for ``seed``."""
    return hashlib.blake2b(seed.encode(), digest_size=8).hexdigest() + "-FRA"


def html_error_page(status: int, ray: str) -> bytes:
    """The small HTML page an edge proxy sends instead of the API's JSON."""
    title = _HTML_TITLES.get(status, "Error")
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="robots" content="noindex, nofollow">
<title>api.cloudflare.com | {status}: {title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:3em;color:#333}}
.code{{color:#999;font-weight:normal}}footer{{margin-top:2em;font-size:.8em;color:#777}}</style>
</head>
<body>
<main id="error-{status}">
<h1>{title} <span class="code">Error code {status}</span></h1>
<p>The request reached the edge but no valid answer came back from the service behind it.
Try again in a few minutes.</p>
<section class="trace">
<p>You: <strong>Browser</strong> &middot; Edge: <strong>Working</strong> &middot;
Host: <strong>Error</strong></p>
</section>
</main>
<footer>Ray ID: <strong>{ray}</strong> &middot; Performance &amp; security by the edge</footer>
</body>
</html>
"""
    return page.encode()
