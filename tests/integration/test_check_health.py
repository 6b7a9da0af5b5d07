"""`enrich-worker check-health` against a live endpoint: exit 0 only when live and ready."""

from __future__ import annotations

import asyncio
import os
import sys

from prometheus_client import CollectorRegistry

from tests.conftest import ROOT
from worker.httpserver import bound_port, serve
from worker.observability import Health, Metrics, metrics_handler


async def _check_health(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "check-health", *args,
        env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_check_health_follows_healthz_and_readyz() -> None:
    health = Health()
    server = await serve(
        metrics_handler(Metrics(CollectorRegistry()), health), host="127.0.0.1", port=0
    )
    url = f"http://127.0.0.1:{bound_port(server)}"
    try:
        code, out = await _check_health("--url", url)
        assert code == 1, out
        assert "ok   /healthz: alive" in out
        assert "FAIL /readyz: starting" in out

        health.ready, health.reason = True, "3 partitions assigned"
        code, out = await _check_health("--url", url)
        assert code == 0, out
        assert "ok   /readyz: 3 partitions assigned" in out

        health.stuck = "no progress for 600 s on ids[0]"
        code, out = await _check_health("--url", url)
        assert code == 1, out
        assert "FAIL /healthz: no progress for 600 s on ids[0]" in out

        # The port comes from the settings when --url is not given.
        env_port = url.rsplit(":", 1)[1]
        os.environ["ENRICH_METRICS__PORT"] = env_port
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "worker", "check-health", cwd=ROOT,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out_b, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
        finally:
            del os.environ["ENRICH_METRICS__PORT"]
        assert proc.returncode == 1
        assert "no progress for 600 s" in out_b.decode()
    finally:
        server.close()
        await server.wait_closed()

    code, out = await _check_health("--url", url, "--timeout", "1")  # nothing listens now
    assert code == 1
    assert out.count("FAIL") == 2
    assert "no answer from" in out
