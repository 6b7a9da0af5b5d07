"""Assemble and run the long-running worker: metrics endpoint, enricher, Kafka clients."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CollectorRegistry, ProcessCollector

from worker.enricher import open_enricher
from worker.errors import ConfigError
from worker.httpserver import bound_port, serve
from worker.kafka import batch_size_for, build_consumer, build_producer
from worker.observability import Health, Metrics, metrics_handler
from worker.pipeline import Pipeline, RunStats
from worker.preflight import require_topics
from worker.settings import MetricsSettings, Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def metrics_endpoint(
    settings: MetricsSettings, metrics: Metrics, health: Health
) -> AsyncIterator[int | None]:
    """Serve /metrics, /healthz and /readyz while the block runs; yields the bound port."""
    if not settings.enabled:
        yield None
        return
    try:
        server = await serve(
            metrics_handler(metrics, health), host=settings.host, port=settings.port
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {settings.host}:{settings.port} ({exc.strerror}): "
            "set ENRICH_METRICS__PORT to a free port (0 picks one) or ENRICH_METRICS__ENABLED=false"
        ) from None
    port = bound_port(server)
    log.info("metrics endpoint up", extra={"url": f"http://{settings.host}:{port}/metrics"})
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


async def run_worker(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    burst: bool = False,
    registry: CollectorRegistry | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunStats:
    """Run the pipeline until ``stop`` is set (or, with ``burst``, the input is drained)."""
    await require_topics(settings.kafka)
    metrics = Metrics(registry or CollectorRegistry())
    ProcessCollector(registry=metrics.registry)  # process_* (CPU, memory, open fds)
    health = Health()
    async with (
        metrics_endpoint(settings.metrics, metrics, health),
        open_enricher(settings.cloudflare, metrics, transport=transport) as enricher,
    ):
        pipeline = Pipeline(
            settings=settings,
            enricher=enricher,
            consumer=build_consumer(settings.kafka),
            producer=build_producer(
                settings.kafka,
                transactional=settings.pipeline.exactly_once,
                max_batch_bytes=await batch_size_for(settings.kafka),
            ),
            metrics=metrics,
            health=health,
        )
        return await pipeline.run(stop=stop, burst=burst)
