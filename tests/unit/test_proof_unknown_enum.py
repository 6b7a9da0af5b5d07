"""A value outside a documented enum never drops the message: kept raw, and counted.

``golden/unknown-enum-values.answer.json`` has a new disposition (``QUANTUM-PHISH``), a new
attachment and finding detection and a new SPF result. build_event keeps each raw string
and reports each through ``on_unknown``; the pipeline wires ``on_unknown`` to
``enrich_unknown_enum_values_total{field}``. The wiring is checked without Kafka: a real
``Pipeline`` with stand-in consumer and producer and a real ``Enricher`` whose HTTP
transport serves the answer processes one input message, and the produced event and the
metrics registry are read back.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.unit.schema import sdk_parse
from worker.cloudflare.answers import parse_answer
from worker.enricher import open_enricher
from worker.events import Source, build_event
from worker.inputs import EnrichRequest
from worker.observability import Metrics
from worker.pipeline import Pipeline, _Inbound
from worker.settings import load_settings

ANSWER = (Path(__file__).parent / "golden" / "unknown-enum-values.answer.json").read_bytes()
ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
INVESTIGATE_ID = "4Njp3P0STMz2c02Q-2026-04-01T09:00:00-00000077"
UNKNOWN = [
    ("final_disposition", "QUANTUM-PHISH"),
    ("validation.spf", "softfail"),
    ("attachments.detection", "ZERO-DAY"),
    ("findings.detection", "PHISH-KIT"),
]


def assert_raw_values_kept(event: dict[str, Any]) -> None:
    assert event["final_disposition"] == "QUANTUM-PHISH"
    assert event["validation"]["spf"] == "softfail"
    assert event["attachments"]["detections"] == ["ZERO-DAY", "NONE"]
    assert event["findings"]["items"][0]["detection"] == "PHISH-KIT"
    assert event["findings"]["max_score"] == 99.9


def test_build_event_keeps_the_raw_strings_and_reports_each_once() -> None:
    detections = parse_answer(200, {}, ANSWER, default_retry_after_s=300)
    reported: list[tuple[str, str]] = []
    event = build_event(
        detections,
        EnrichRequest(INVESTIGATE_ID, ACCOUNT, None),
        None,
        on_unknown=lambda field, value: reported.append((field, value)),
    )
    assert_raw_values_kept(event)
    assert reported == UNKNOWN
    # The SDK (default mode) keeps the same raw strings; its strict mode refuses the answer
    # (test_proof_simulator.test_sdk_gap_unknown_enum_values).
    sdk = sdk_parse(ANSWER)
    assert sdk.final_disposition == event["final_disposition"]


def test_build_event_with_the_metrics_counter() -> None:
    metrics = Metrics(CollectorRegistry())
    detections = parse_answer(200, {}, ANSWER, default_retry_after_s=300)
    for _ in range(2):
        build_event(
            detections,
            EnrichRequest(INVESTIGATE_ID, ACCOUNT, None),
            None,
            on_unknown=lambda field, _: metrics.unknown_values.labels(field=field).inc(),
        )
    for field, _ in UNKNOWN:
        assert unknown_count(metrics, field) == 2
    assert unknown_count(metrics, "validation.dkim") is None


def unknown_count(metrics: Metrics, field: str) -> float | None:
    return metrics.registry.get_sample_value("enrich_unknown_enum_values_total", {"field": field})


# --- through the pipeline, without Kafka -----------------------------------------------------


class _Delivered:
    """What a producer's send() returns: an awaitable acknowledgement."""

    def __await__(self) -> Any:
        return asyncio.sleep(0).__await__()


class FakeProducer:
    """Records every send; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> _Delivered:
        self.sent.append((topic, key, value))
        return _Delivered()


class FakeConsumer:
    """Never used by the path under test; here so that the Pipeline can be built."""

    async def commit(self, offsets: Any) -> None:
        raise AssertionError("no commit expected")


async def test_pipeline_keeps_the_raw_strings_and_counts_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("ENRICH_"):  # a developer's settings must not leak in
            monkeypatch.delenv(name)
    calls: list[str] = []

    def cloudflare(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, content=ANSWER, headers={"content-type": "application/json"})

    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:1", "output_topic": "events", "dlq_topic": "dlq"},
        cloudflare={"account_id": ACCOUNT, "api_token": "t"},
        metrics={"enabled": False},
    )
    metrics = Metrics(CollectorRegistry())
    producer = FakeProducer()
    async with open_enricher(
        settings.cloudflare, metrics, transport=httpx.MockTransport(cloudflare)
    ) as enricher:
        pipeline = Pipeline(
            settings=settings,
            enricher=enricher,
            consumer=FakeConsumer(),  # type: ignore[arg-type]
            producer=producer,  # type: ignore[arg-type]
            metrics=metrics,
        )
        try:
            message = _Inbound(
                Source("email-investigate-ids", 0, 7), None, INVESTIGATE_ID.encode(), 0
            )
            send = await pipeline._process(message)
            await send()
        finally:
            await pipeline._admin.close()
    assert calls == [
        f"/client/v4/accounts/{ACCOUNT}/email-security/investigate/{INVESTIGATE_ID}/detections"
    ]
    assert [(topic, key) for topic, key, _ in producer.sent] == [
        ("events", INVESTIGATE_ID.encode())
    ]
    event = orjson.loads(producer.sent[0][2])
    assert_raw_values_kept(event)
    assert event["source"] == {"topic": "email-investigate-ids", "partition": 0, "offset": 7}
    for field, _ in UNKNOWN:
        assert unknown_count(metrics, field) == 1, field
    assert unknown_count(metrics, "validation.dkim") is None
    get = metrics.registry.get_sample_value
    assert get("enrich_events_by_disposition_total", {"disposition": "QUANTUM-PHISH"}) == 1
    assert get("enrich_events_produced_total") == 1
    assert b'enrich_unknown_enum_values_total{field="final_disposition"} 1.0' in metrics.render()
