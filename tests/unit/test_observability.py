"""The metrics helpers, and that the README, dashboard, rules and runbook name real metrics."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from tests.unit.conftest import FakeClock
from worker.budget import Budget
from worker.cloudflare.client import Credentials, DetectionsClient
from worker.enricher import open_enricher
from worker.errors import RateLimitedError
from worker.httpserver import Request
from worker.observability import Health, Metrics, metrics_handler
from worker.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
RULES = (ROOT / "deploy/prometheus/enrich-worker.rules.yml").read_text()
DASHBOARD = json.loads((ROOT / "deploy/grafana/enrich-worker.json").read_text())


def _metrics() -> tuple[Metrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return Metrics(registry), registry


def _names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
    return names


def test_error_codes_are_counted_with_a_bounded_set_of_label_values() -> None:
    metrics, registry = _metrics()
    metrics.api_error(7003)
    metrics.api_error(7003)
    for code in range(100):
        metrics.api_error(20_000 + code)
    assert registry.get_sample_value("enrich_api_errors_total", {"code": "7003"}) == 2
    codes = {
        s.labels["code"]
        for f in registry.collect()
        if f.name == "enrich_api_errors"
        for s in f.samples
        if s.name.endswith("_total")
    }
    assert len(codes) == 51  # 50 codes, then "other"
    assert registry.get_sample_value("enrich_api_errors_total", {"code": "other"}) == 51


def test_drain_estimate() -> None:
    metrics, registry = _metrics()
    metrics.drain(0, 0.0)
    assert registry.get_sample_value("enrich_backlog_drain_seconds") == 0
    metrics.drain(100, 0.0)
    assert registry.get_sample_value("enrich_backlog_drain_seconds") == math.inf
    metrics.drain(100, 20.0)
    assert registry.get_sample_value("enrich_backlog_drain_seconds") == 5


def test_partition_series_are_set_and_forgotten() -> None:
    metrics, registry = _metrics()
    labels = {"topic": "ids", "partition": "2"}
    metrics.partition("ids", 2, lag=7, uncommitted=3)
    metrics.committed.labels(**labels).set(40)
    assert registry.get_sample_value("enrich_consumer_lag_messages", labels) == 7
    assert registry.get_sample_value("enrich_uncommitted_offsets", labels) == 3
    metrics.partition("ids", 2, lag=None, uncommitted=0)  # high watermark unknown: lag kept
    assert registry.get_sample_value("enrich_consumer_lag_messages", labels) == 7
    metrics.forget_partition("ids", 2)
    metrics.forget_partition("ids", 2)  # twice is fine
    for name in ("enrich_consumer_lag_messages", "enrich_uncommitted_offsets"):
        assert registry.get_sample_value(name, labels) is None
    assert registry.get_sample_value("enrich_committed_offset", labels) is None


def test_end_to_end_latency_from_the_input_timestamp() -> None:
    metrics, registry = _metrics()
    metrics.message_finished(int(time.time() * 1000) - 2_000)
    metrics.message_finished(None)  # no timestamp: not observed
    metrics.message_finished(-1)
    assert registry.get_sample_value("enrich_end_to_end_latency_seconds_count") == 1
    total = registry.get_sample_value("enrich_end_to_end_latency_seconds_sum")
    assert total is not None
    assert 1.5 < total < 10


async def test_the_metrics_page_reports_liveness_and_readiness() -> None:
    metrics, registry = _metrics()
    health = Health()
    handle = metrics_handler(metrics, health)
    request = Request(method="GET", raw_path="/metrics", path="/metrics", query={}, headers={})
    await handle(request)
    assert registry.get_sample_value("enrich_ready") == 0
    assert registry.get_sample_value("enrich_live") == 1
    health.ready, health.stuck = True, "no progress"
    body = (await handle(request)).body
    assert b"enrich_ready 1.0" in body
    assert b"enrich_live 0.0" in body


def test_every_metric_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(enrich_[a-z_]+)", readme, re.MULTILINE))
    _, registry = _metrics()
    assert _names(registry) == documented


def _used_metric_names(text: str) -> set[str]:
    names = set(re.findall(r"(?<![:\w])(enrich_[a-z_]+|process_[a-z_]+|up)(?=[{\[ )])", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_dashboard_and_rules_only_use_metrics_the_worker_exports() -> None:
    _, registry = _metrics()
    exported = _names(registry) | {
        f.name.removesuffix("_total") for f in registry.collect()
    }  # histogram family names
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", [])]
    used = _used_metric_names("\n".join(exprs) + "\n" + RULES)
    standard = {"up", "process_resident_memory_bytes", "process_cpu_seconds_total"}
    assert used - exported - standard == set()


def test_every_panel_is_templated_by_job_and_instance() -> None:
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            selectors = re.findall(r"\{([^}]*)\}", target["expr"])
            selectors = [s for s in selectors if "instance" in s or "job" in s or "$" in s]
            series = re.findall(r"[a-z_:]+\{", target["expr"])
            assert len(selectors) == len(series), target["expr"]
            for selector in selectors:
                assert 'job=~"$job"' in selector
                assert 'instance=~"$instance"' in selector


def test_every_alert_has_a_runbook_section() -> None:
    runbook = (ROOT / "docs/runbook.md").read_text()
    alerts = re.findall(r"- alert: (\w+)", RULES)
    assert len(alerts) >= 8
    sections = set(re.findall(r"^## (\w+)$", runbook, re.MULTILINE))
    assert set(alerts) <= sections
    for alert in alerts:
        assert f"docs/runbook.md#{alert.lower()}" in RULES
        body = runbook.split(f"## {alert}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**What it means**", "**How to confirm**", "**What to do**"):
            assert part in body, f"{alert}: {part} missing"
    tested = set(
        re.findall(
            r"alertname: (\w+)",
            (ROOT / "deploy/prometheus").joinpath("enrich-worker.rules.test.yml").read_text(),
        )
    )
    assert set(alerts) <= tested


LOCKED = orjson.dumps(
    {"success": False, "errors": [{"code": 971, "message": "Please wait"}], "messages": [],
     "result": None}
)  # fmt: skip


async def test_lockouts_and_error_codes_are_counted_by_the_client() -> None:
    clock = FakeClock()
    budget = Budget(calls=1000, window_s=60, clock=clock, sleep=clock.sleep)
    metrics, registry = _metrics()
    transport = httpx.MockTransport(
        lambda _: httpx.Response(429, content=LOCKED, headers={"retry-after": "5"})
    )
    async with httpx.AsyncClient(transport=transport) as http:
        api = DetectionsClient(
            base_url="https://api.example/client/v4",
            credentials=Credentials(token=SecretStr("t")),
            http=http,
            budget=budget,
            metrics=metrics,
            max_in_flight=4,
        )
        for _ in range(2):  # the second call waits the first lockout out, then starts one
            with pytest.raises(RateLimitedError):
                await api.fetch("023e105f4ecef8ad9ca31a8372d0c353", "a")
        assert budget.blocked_for_s > 0
        assert registry.get_sample_value("enrich_api_lockouts_total") == 2
        assert registry.get_sample_value("enrich_api_errors_total", {"code": "971"}) == 2
        # A 429 for a call caught in a lockout that is already known is not a new one.
        api._account_wide(RateLimitedError("late", status=429, codes=(971,)), "x")
        assert registry.get_sample_value("enrich_api_lockouts_total") == 2


async def test_budget_remaining_is_read_at_scrape_time() -> None:
    metrics, registry = _metrics()
    settings = load_settings(
        cloudflare={"api_token": "t", "budget_calls": 100, "budget_safety": 0.5}
    ).cloudflare
    budget = Budget(calls=settings.effective_budget, window_s=60)
    async with open_enricher(settings, metrics, budget=budget):
        assert registry.get_sample_value("enrich_budget_remaining") == 50
        await budget.acquire()
        assert registry.get_sample_value("enrich_budget_remaining") == 49
