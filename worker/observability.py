"""Metrics (on a registry passed in), structured logging, and the /metrics /healthz /readyz
endpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from typing import TextIO

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from worker import __version__
from worker.httpserver import Handler, Request, Response

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_END_TO_END_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
_MAX_ERROR_CODES = 50
"""Distinct Cloudflare error codes kept as label values; any further one counts as other."""


class Metrics:
    """Every metric the worker exports. Labels never carry an id."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.consumed = Counter(
            "enrich_messages_consumed_total", "Input messages read from Kafka.", registry=registry
        )
        self.skipped = Counter(
            "enrich_messages_skipped_total",
            "Input messages skipped because a previous owner already finished them.",
            registry=registry,
        )
        self.produced = Counter(
            "enrich_events_produced_total",
            "Enrichment events acknowledged by the broker.",
            registry=registry,
        )
        self.dlq = Counter(
            "enrich_dlq_records_total",
            "DLQ records acknowledged by the broker, by reason.",
            ["reason"],
            registry=registry,
        )
        self.api_requests = Counter(
            "enrich_api_requests_total",
            "Cloudflare API calls by HTTP status (or transport error kind).",
            ["status"],
            registry=registry,
        )
        self.api_latency = Histogram(
            "enrich_api_request_duration_seconds",
            "Time from sending a Cloudflare API call to its full answer.",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.api_in_flight = Gauge(
            "enrich_api_requests_in_flight",
            "Cloudflare API calls currently in flight.",
            registry=registry,
        )
        self.concurrency_limit = Gauge(
            "enrich_api_concurrency_limit",
            "Current adaptive bound on API calls in flight.",
            registry=registry,
        )
        self.retries = Counter(
            "enrich_retries_total",
            "Retried API attempts, by reason.",
            ["reason"],
            registry=registry,
        )
        self.budget_wait = Counter(
            "enrich_budget_wait_seconds_total",
            "Seconds calls spent waiting for the rate budget or a lockout.",
            registry=registry,
        )
        self.lockout_active = Gauge(
            "enrich_api_lockout_active",
            "1 while Cloudflare's rate limit lockout (a 429) holds every call.",
            registry=registry,
        )
        self.auth_refused = Gauge(
            "enrich_api_credentials_refused",
            "1 while Cloudflare refuses the credentials (401/403, 10000, 6003).",
            registry=registry,
        )
        self.cache_hits = Counter(
            "enrich_cache_hits_total",
            "API calls saved: answered from the cache, or shared with a concurrent call.",
            ["kind"],
            registry=registry,
        )
        self.api_unavailable = Gauge(
            "enrich_api_unavailable",
            "1 while so many calls in a row failed that every call is held (API down).",
            registry=registry,
        )
        self.pending = Gauge(
            "enrich_messages_pending",
            "Messages consumed whose output is not yet acknowledged.",
            registry=registry,
        )
        self.committed = Gauge(
            "enrich_committed_offset",
            "Last input offset committed, per partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.unknown_values = Counter(
            "enrich_unknown_enum_values_total",
            "Values outside a documented enum, kept as raw strings, by field.",
            ["field"],
            registry=registry,
        )
        self.dispositions = Counter(
            "enrich_events_by_disposition_total",
            "Events produced, by final disposition.",
            ["disposition"],
            registry=registry,
        )
        self.api_errors = Counter(
            "enrich_api_errors_total",
            "Cloudflare error codes in API answers (one per code listed), by code.",
            ["code"],
            registry=registry,
        )
        self.budget_remaining = Gauge(
            "enrich_budget_remaining",
            "Calls the rate budget would let through right now.",
            registry=registry,
        )
        self.lockouts = Counter(
            "enrich_api_lockouts_total",
            "Rate limit lockouts (a 429 while calls were not already held).",
            registry=registry,
        )
        self.lag = Gauge(
            "enrich_consumer_lag_messages",
            "Input messages after the committed offset (high watermark minus commit), "
            "per partition.",
            ["topic", "partition"],
            registry=registry,
        )
        self.uncommitted = Gauge(
            "enrich_uncommitted_offsets",
            "Offsets consumed from the partition and not yet behind its commit point "
            "(in flight or finished out of order).",
            ["topic", "partition"],
            registry=registry,
        )
        self.end_to_end = Histogram(
            "enrich_end_to_end_latency_seconds",
            "From the input message's timestamp to its event or DLQ record acknowledged.",
            buckets=_END_TO_END_BUCKETS,
            registry=registry,
        )
        self.drain_estimate = Gauge(
            "enrich_backlog_drain_seconds",
            "Estimated seconds to work off the current lag at the recent completion rate "
            "(+Inf when there is lag and nothing completes).",
            registry=registry,
        )
        self.live = Gauge(
            "enrich_live",
            "1 while /healthz answers 200 (run loop turning, no partition stuck).",
            registry=registry,
        )
        self.ready = Gauge(
            "enrich_ready",
            "1 while /readyz answers 200 (partitions assigned, credentials accepted).",
            registry=registry,
        )
        self._error_codes: set[str] = set()
        Info("enrich_build", "Version of the worker.", registry=registry).info(
            {"version": __version__}
        )

    def api_error(self, code: int) -> None:
        """Count one Cloudflare error code; label values stay few whatever the API sends."""
        label = str(code)
        if label not in self._error_codes:
            if len(self._error_codes) >= _MAX_ERROR_CODES:
                label = "other"
            else:
                self._error_codes.add(label)
        self.api_errors.labels(code=label).inc()

    def message_finished(self, timestamp_ms: int | None) -> None:
        """Observe end-to-end latency from the input's timestamp (skipped when it has none)."""
        if timestamp_ms is not None and timestamp_ms > 0:
            self.end_to_end.observe(max(0.0, time.time() - timestamp_ms / 1000))

    def partition(self, topic: str, partition: int, *, lag: int | None, uncommitted: int) -> None:
        """Set the per-partition gauges (lag only when the high watermark is known)."""
        labels = (topic, str(partition))
        if lag is not None:
            self.lag.labels(*labels).set(lag)
        self.uncommitted.labels(*labels).set(uncommitted)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the series of a partition this worker no longer owns."""
        for gauge in (self.lag, self.uncommitted, self.committed):
            with contextlib.suppress(KeyError):
                gauge.remove(topic, str(partition))

    def drain(self, lag: int, rate_per_s: float) -> None:
        """Set the drain estimate from the total lag and the recent completion rate."""
        if lag <= 0:
            self.drain_estimate.set(0)
        else:
            self.drain_estimate.set(lag / rate_per_s if rate_per_s > 0 else math.inf)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


@dataclass
class Health:
    """What /healthz and /readyz report; the run loop updates it."""

    ready: bool = False
    reason: str = "starting"
    last_loop_at: float = field(default_factory=time.monotonic)
    max_loop_silence_s: float = 60.0
    stuck: str | None = None
    """Set by the run loop when a partition with work has made no progress for too long."""

    def beat(self) -> None:
        """Called by the run loop on every turn."""
        self.last_loop_at = time.monotonic()

    @property
    def alive(self) -> bool:
        """The run loop turned recently and no partition is stuck."""
        return self.stuck is None and time.monotonic() - self.last_loop_at < self.max_loop_silence_s

    @property
    def liveness(self) -> str:
        """Why /healthz says what it says."""
        if self.stuck is not None:
            return self.stuck
        return "alive" if self.alive else "run loop stalled"


def metrics_handler(metrics: Metrics, health: Health) -> Handler:
    """The request handler for the metrics and health endpoint."""

    async def handle(request: Request) -> Response:
        if request.method != "GET":
            return Response(status=405, content_type="text/plain")
        if request.path == "/metrics":
            metrics.live.set(1 if health.alive else 0)
            metrics.ready.set(1 if health.ready else 0)
            return Response(body=metrics.render(), content_type=CONTENT_TYPE_LATEST)
        if request.path == "/healthz":
            return _status(200 if health.alive else 503, health.liveness)
        if request.path == "/readyz":
            return _status(200 if health.ready else 503, health.reason)
        return _status(404, "not found: try /metrics, /healthz or /readyz")

    return handle


def _status(code: int, text: str) -> Response:
    return Response(status=code, body=text.encode() + b"\n", content_type="text/plain")


_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


def _extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a log call passed with ``extra=`` (topic, partition, offset, ...)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _STANDARD_ATTRS and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extra_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


JsonFormatter.converter = time.gmtime


class TextFormatter(logging.Formatter):
    """A line for a person: the message, then the ``extra`` fields as ``key=value``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [f"{key}={value}" for key, value in _extra_fields(record).items()]
        if not extras:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {' '.join(extras)}{newline}{rest}"


class LibraryThrottle(logging.Filter):
    """Let a library's repeated message through once per interval, with a count.

    While the broker is down, aiokafka logs every reconnect attempt; a line a second says
    the same to the person on call without filling the disk.
    """

    def __init__(self, *, prefixes: tuple[str, ...], interval_s: float = 10.0) -> None:
        super().__init__()
        self._prefixes = prefixes
        self._interval_s = interval_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self._prefixes):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last, suppressed = self._seen.get(key, (-self._interval_s, 0))
        if now - last < self._interval_s:
            self._seen[key] = (last, suppressed + 1)
            return False
        if suppressed:
            record.suppressed = suppressed  # shows in JSON logs as "suppressed": N
        if len(self._seen) > 1_000:
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


def setup_logging(*, level: str, fmt: str, stream: TextIO = sys.stdout) -> None:
    """Send the worker's logs to ``stream`` as JSON lines (or plain text)."""
    handler = logging.StreamHandler(stream)
    handler.addFilter(LibraryThrottle(prefixes=("aiokafka", "kafka")))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries' per-request and per-rebalance chatter is not worth a line at 3 a.m.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    for name in ("httpx", "httpcore", "aiokafka"):
        logging.getLogger(name).setLevel(quiet)
