"""A real Prometheus (Debian's package) scrapes a running worker fed by the real broker and
the simulator. Every query of every dashboard panel and every rule expression is sent to its
HTTP query API and must parse; the panels return data; promtool accepts /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import ROOT, SimulatorFactory, Topics, make_settings, produce, wait_for
from worker.service import run_worker
from worker.simulator import catalog_id

SEED = 17
KNOWN = 300
JOB = "enrich-worker"
DASHBOARD = ROOT / "deploy/grafana/enrich-worker.json"
RULES = ROOT / "deploy/prometheus/enrich-worker.rules.yml"

# Panels whose series only exist once something rare happened (no simulator answer carries
# an unknown enum value by default); their queries must still parse.
MAY_BE_EMPTY = {"Unknown enum values"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found: install Debian's prometheus package "
            "(`apt-get install prometheus`; `make tools` does it when run as root)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _grafana_to_promql(expr: str, instance: str) -> str:
    """Replace the dashboard's Grafana variables the way Grafana would for one instance."""
    for name, value in {
        "$__rate_interval": "1m",
        "$__range": "5m",
        "$job": JOB,
        "$instance": re.escape(instance).replace("\\", "\\\\"),
    }.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unexpected template variable in {expr}"
    return expr


def _panels() -> list[dict[str, Any]]:
    doc = json.loads(DASHBOARD.read_text())
    panels = [p for p in doc["panels"] if p["type"] != "row"]
    for row in doc["panels"]:
        panels.extend(row.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def _variable_selectors() -> list[str]:
    """The series selectors of the dashboard's label_values() template variables."""
    doc = json.loads(DASHBOARD.read_text())
    selectors = []
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *\w+\)", var["query"]["query"])
            assert match, var["query"]
            selectors.append(match.group(1))
    return selectors


class PromApi:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """Run an instant query; fail the test with Prometheus' error if it does not parse."""
        answer = await self._client.get("/api/v1/query", params={"query": expr})
        body = answer.json()
        if answer.status_code != 200 or body["status"] != "success":
            pytest.fail(
                f"Prometheus refused {expr!r}: {body.get('errorType')}: {body.get('error')}"
            )
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.mark.partitions(3)
async def test_real_prometheus_scrapes_the_worker_and_runs_every_panel_and_rule(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    prometheus, promtool = _tool("prometheus"), _tool("promtool")
    api = await start_simulator(
        seed=SEED,
        catalog_size=KNOWN,  # ids beyond it are unknown: not_found, to the DLQ
        fault_rates={"json_503": 0.05},  # retries and Cloudflare error codes
        latency_dist="uniform",
        latency_s=0.002,
        latency_max_s=0.05,
    )
    ids = [catalog_id(SEED, i) for i in range(KNOWN + 20)]
    values = [i.encode() for i in ids] + [i.encode() for i in ids[:30]] + [b"", b"{not json"]
    await produce(bootstrap, topics.input, values)

    metrics_port, prom_port = _free_port(), _free_port()
    instance = f"127.0.0.1:{metrics_port}"
    settings = make_settings(
        bootstrap,
        topics,
        api.base_url,
        metrics={"enabled": True, "port": metrics_port},
        # A small, fast budget so that waiting for it shows within seconds.
        cloudflare={"budget_calls": 60, "budget_window_s": 1.0, "max_in_flight": 8},
    )
    registry = CollectorRegistry()
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(settings, stop=stop, registry=registry))

    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [instance]}]}],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{prom_port}", timeout=10) as client,
            httpx.AsyncClient(base_url=f"http://{instance}", timeout=10) as worker_http,
        ):
            prom = PromApi(client)

            async def prometheus_ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(
                        f"prometheus exited with {proc.returncode}: "
                        + (tmp_path / "prometheus.log").read_text()[-2000:]
                    )
                try:
                    return (await client.get("/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(prometheus_ready, what="prometheus ready")

            async def all_finished() -> bool:
                done = await prom.value(
                    f'sum(enrich_events_produced_total{{job="{JOB}"}})'
                    f' + sum(enrich_dlq_records_total{{job="{JOB}"}})'
                    f' + sum(enrich_messages_skipped_total{{job="{JOB}"}})'
                )
                return done is not None and done >= len(values)

            await wait_for(all_finished, deadline_s=90, what="Prometheus to see every message")

            # The worker's own exposition passes promtool's linter.
            exposition = (await worker_http.get("/metrics")).content
            lint = await asyncio.to_thread(
                subprocess.run,
                [promtool, "check", "metrics"],
                input=exposition,
                capture_output=True,
                check=False,
            )
            assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()

            # Rules: Prometheus loaded the file, evaluated every rule without error, and
            # every expression parses through the query API as well.
            async def rules_evaluated() -> list[dict[str, Any]] | None:
                groups = (await client.get("/api/v1/rules")).json()["data"]["groups"]
                rules = [r for g in groups for r in g["rules"]]
                return rules if rules and all(r["health"] == "ok" for r in rules) else None

            await wait_for(
                lambda: _truthy(rules_evaluated()), what="every rule evaluated with health ok"
            )
            rules = await rules_evaluated()
            assert rules is not None
            names = {r["name"] for r in rules if r["type"] == "alerting"}
            assert names == set(re.findall(r"- alert: (\w+)", RULES.read_text()))
            for rule in rules:
                await prom.query(rule["query"])

            # Recording rules over 5-minute rates have data once two scrapes are in.
            async def recorded() -> bool:
                return bool(
                    await prom.query(f'instance:enrich_events_produced:rate5m{{job="{JOB}"}}')
                )

            await wait_for(recorded, what="recording rules to produce data")

            for selector in _variable_selectors():
                assert await prom.query(_grafana_to_promql(selector, instance)), selector

            empty: list[str] = []
            for panel in _panels():
                targets = panel.get("targets", [])
                assert targets, f"panel {panel['title']!r} has no query"
                for target in targets:
                    expr = _grafana_to_promql(target["expr"], instance)
                    if not await prom.query(expr) and panel["title"] not in MAY_BE_EMPTY:
                        empty.append(f"{panel['title']}: {expr}")
            assert not empty, "panels without data:\n" + "\n".join(empty)

            # A few values that must be right, not only present.
            assert await prom.value(f'up{{job="{JOB}"}}') == 1
            assert await prom.value(f'enrich_ready{{job="{JOB}"}}') == 1
            assert await prom.value(f'enrich_live{{job="{JOB}"}}') == 1
            not_found = await prom.value(
                f'sum(enrich_dlq_records_total{{job="{JOB}", reason="not_found"}})'
            )
            assert not_found is not None
            assert not_found >= 20

            async def lag_zero() -> bool:
                return await prom.value(f'sum(enrich_consumer_lag_messages{{job="{JOB}"}})') == 0

            await wait_for(lag_zero, what="lag back to 0 once everything is committed")
            assert await prom.value(f'max(enrich_backlog_drain_seconds{{job="{JOB}"}})') == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        stop.set()
        await worker


async def _truthy(value: Any) -> bool:
    return bool(await value)
