"""The command line as a user runs it: one-shot mode, the service with signals, kcat."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
import time

import httpx
import orjson
import pytest

from tests.conftest import (
    ACCOUNT,
    ROOT,
    SimulatorFactory,
    Topics,
    produce,
    read_all,
    wait_for,
)
from worker.kafka import committed_offsets, end_offsets
from worker.simulator import DEFAULT_TOKEN, catalog_id

SEED = 3


def _env(base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")}
    env.update(
        ENRICH_CLOUDFLARE__BASE_URL=base_url,
        ENRICH_CLOUDFLARE__ACCOUNT_ID=ACCOUNT,
        ENRICH_CLOUDFLARE__API_TOKEN=DEFAULT_TOKEN,
        ENRICH_CLOUDFLARE__BACKOFF_BASE_S="0.01",
        ENRICH_CLOUDFLARE__BACKOFF_MAX_S="0.05",
        **extra,
    )
    return env


async def _cli(
    *args: str, env: dict[str, str], stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        *args,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def test_enrich_one_shot_keeps_input_order_and_reports_failures(
    start_simulator: SimulatorFactory,
) -> None:
    ids = [catalog_id(SEED, i) for i in range(30)]
    # Reverse latencies: answers arrive out of order, output must not.
    api = await start_simulator(
        seed=SEED, latency_by_id={x: 0.01 * (30 - i) for i, x in enumerate(ids)}
    )
    # A line that is not UTF-8 is one failure; the lines after it are still enriched.
    stdin = b"\n".join(
        [*(i.encode() for i in ids[10:20]), b"\xff", *(i.encode() for i in ids[20:])]
    )
    stdin += b"\nnot-a-known-id\nbad/id\n"
    code, out, err = await _cli("enrich", *ids[:10], "-", stdin=stdin, env=_env(api.base_url))

    assert code == 1  # some ids failed
    events = [orjson.loads(line) for line in out.splitlines()]
    assert [e["investigate_id"] for e in events] == ids
    assert all(e["source"] is None and e["schema_version"] == 1 for e in events)
    failures = [orjson.loads(line) for line in err.splitlines() if line.startswith(b"{")]
    assert [(f["investigate_id"], f["error"]) for f in failures] == [
        ("\ufffd", "invalid_id"),
        ("not-a-known-id", "not_found"),
        ("bad/id", "invalid_id"),
    ]


async def test_enrich_with_the_legacy_email_and_key(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator(seed=SEED, auth_email="soc@example.com", auth_key="k" * 37)
    env = _env(api.base_url)
    del env["ENRICH_CLOUDFLARE__API_TOKEN"]
    env.update(
        ENRICH_CLOUDFLARE__AUTH_EMAIL="soc@example.com", ENRICH_CLOUDFLARE__AUTH_KEY="k" * 37
    )
    code, out, err = await _cli("enrich", catalog_id(SEED, 5), env=env)
    assert code == 0, err.decode()
    assert orjson.loads(out)["investigate_id"] == catalog_id(SEED, 5)
    assert b"k" * 37 not in err


async def test_enrich_without_credentials_names_the_fix(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator(seed=SEED)
    env = _env(api.base_url)
    del env["ENRICH_CLOUDFLARE__API_TOKEN"]
    code, out, err = await _cli("enrich", catalog_id(SEED, 0), env=env)
    assert code == 2
    assert out == b""
    assert b"ENRICH_CLOUDFLARE__API_TOKEN" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_run_serves_metrics_and_exits_0_on_sigterm_with_everything_committed(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    api = await start_simulator(seed=SEED)
    ids = [catalog_id(SEED, i) for i in range(200)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    port = _free_port()
    env = _env(
        api.base_url,
        ENRICH_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        ENRICH_KAFKA__INPUT_TOPIC=topics.input,
        ENRICH_KAFKA__OUTPUT_TOPIC=topics.output,
        ENRICH_KAFKA__DLQ_TOPIC=topics.dlq,
        ENRICH_KAFKA__GROUP_ID=topics.group,
        ENRICH_METRICS__PORT=str(port),
        ENRICH_PIPELINE__COMMIT_INTERVAL_S="0.2",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "run",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def produced_all() -> bool:
                try:
                    text = (await client.get("/metrics")).text
                except httpx.TransportError:
                    return False
                return f"enrich_events_produced_total {float(len(ids))}" in text

            await wait_for(produced_all, deadline_s=60, what="all events in /metrics")
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/healthz")).status_code == 200
            metrics = (await client.get("/metrics")).text
            for name in (
                "enrich_messages_consumed_total",
                "enrich_dlq_records_total",
                "enrich_api_requests_total",
                "enrich_api_request_duration_seconds_bucket",
                "enrich_api_requests_in_flight",
            ):
                assert name in metrics
            assert DEFAULT_TOKEN not in metrics
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert time.monotonic() - started < 30
    ends = await end_offsets(bootstrap, topics.input)
    assert await committed_offsets(bootstrap, topics.group, topics.input) == ends
    logs = out + err
    assert DEFAULT_TOKEN.encode() not in logs
    assert b"signal received" in logs


async def test_kcat_reads_the_events_back(
    bootstrap: str, topics: Topics, start_simulator: SimulatorFactory
) -> None:
    """A Kafka client that is not ours (kcat, librdkafka) reads the events as JSON."""
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.fail("kcat is not installed: apt-get install kcat (make test installs it as root)")
    api = await start_simulator(seed=SEED)
    from tests.conftest import make_settings
    from worker.service import run_worker

    ids = [catalog_id(SEED, i) for i in range(25)]
    await produce(bootstrap, topics.input, (i.encode() for i in ids))
    await run_worker(make_settings(bootstrap, topics, api.base_url), burst=True)
    await read_all(bootstrap, topics.output, len(ids))
    proc = await asyncio.create_subprocess_exec(
        kcat,
        "-C",
        "-b",
        bootstrap,
        "-t",
        topics.output,
        "-e",
        "-q",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    events = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted(e["investigate_id"] for e in events) == sorted(ids)


async def test_create_topics_then_check_passes_and_run_refuses_missing_topics(
    bootstrap: str, start_simulator: SimulatorFactory
) -> None:
    api = await start_simulator(seed=SEED)
    tag = os.urandom(5).hex()
    env = _env(
        api.base_url,
        ENRICH_KAFKA__BOOTSTRAP_SERVERS=bootstrap,
        ENRICH_KAFKA__INPUT_TOPIC=f"c-{tag}-ids",
        ENRICH_KAFKA__OUTPUT_TOPIC=f"c-{tag}-events",
        ENRICH_KAFKA__DLQ_TOPIC=f"c-{tag}-dlq",
        ENRICH_METRICS__ENABLED="false",
    )
    code, out, err = await _cli("run", env=env)
    assert code == 2
    assert f"c-{tag}-ids".encode() in err
    assert b"do not exist" in err

    code, out, _ = await _cli("check", env=env)
    assert code == 1
    assert b"FAIL kafka" in out

    code, out, _ = await _cli("create-topics", "--partitions", "2", env=env)
    assert code == 0
    assert out.count(b": created") == 3

    code, out, _ = await _cli("check", env=env)
    assert code == 0, out.decode()
    assert [line.split()[0] for line in out.splitlines()] == [b"ok", b"ok", b"ok"]

    env["ENRICH_CLOUDFLARE__API_TOKEN"] = "not-the-token"
    code, out, _ = await _cli("check", env=env)
    assert code == 1
    assert b"FAIL api" in out
    assert b"not-the-token" not in out


async def test_enrich_stops_with_exit_2_when_cloudflare_refuses_the_token(
    start_simulator: SimulatorFactory,
) -> None:
    # Found by a new user: one-shot mode held like the service and never returned, so a
    # playbook calling it would hang. It now stops at the first refusal.
    api = await start_simulator(seed=SEED)
    ids = [catalog_id(SEED, i) for i in range(40)]
    env = _env(api.base_url)
    env["ENRICH_CLOUDFLARE__API_TOKEN"] = "not-the-simulator-token"
    code, out, err = await _cli("enrich", *ids, env=env)
    assert code == 2
    assert out == b""
    assert b"Cloudflare refused the credentials" in err
    assert b"not-the-simulator-token" not in err
    refused = api.sim.stats()["requests_by_status"].get("403", 0)
    assert 1 <= refused <= 16  # at most one window of concurrent calls, not one per id


async def test_enrich_stops_when_the_api_does_not_answer() -> None:
    # Found by a new user: with nothing listening at base_url, one-shot mode held every
    # call like the service and never returned once 25 calls in a row had failed.
    base_url = f"http://127.0.0.1:{_free_port()}/client/v4"  # nothing listens there
    ids = [catalog_id(SEED, i) for i in range(100)]
    code, out, err = await _cli("enrich", *ids, env=_env(base_url))
    assert code == 1
    assert out == b""
    assert b"the Cloudflare API does not answer" in err
