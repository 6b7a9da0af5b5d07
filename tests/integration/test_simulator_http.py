"""The simulator over real HTTP, with httpx as the client: what each fault does on the wire.

Each test runs twice: with httpx's default transport and with the worker's AsyncioTransport.

Needs nothing but local sockets. Each test starts its own simulator (port 0) with the
faults it needs; waits are bounded by deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx
import orjson
import pytest

from tests.conftest import ROOT, RunningSimulator, SimulatorFactory, wait_for
from worker.cloudflare.transport import AsyncioTransport
from worker.simulator import DEFAULT_TOKEN, catalog_id

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
AUTH = {"authorization": f"Bearer {DEFAULT_TOKEN}"}
IDS = [catalog_id(1, i) for i in range(20)]


def detections_url(api: RunningSimulator, investigate_id: str) -> str:
    return (
        f"{api.base_url}/accounts/{ACCOUNT}/email-security/investigate/{investigate_id}/detections"
    )


def raw_get(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEFAULT_TOKEN}\r\n\r\n".encode()
    )


CLIENT_TRANSPORT: list[str] = ["httpx"]


@pytest.fixture(autouse=True, params=["httpx", "asyncio"])
def client_transport(request: pytest.FixtureRequest) -> None:
    """Every fault is seen through httpx's own transport and through the worker's."""
    CLIENT_TRANSPORT[0] = request.param


def client(**kwargs: object) -> httpx.AsyncClient:
    if CLIENT_TRANSPORT[0] == "asyncio":
        kwargs["transport"] = AsyncioTransport(limits=httpx.Limits(max_connections=4))
    return httpx.AsyncClient(headers=AUTH, timeout=5.0, **kwargs)  # type: ignore[arg-type]


async def test_reset_aborts_the_connection(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator(fault_by_id={IDS[0]: "reset"})
    async with client() as http:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            await http.get(detections_url(api, IDS[0]))
        assert (await http.get(detections_url(api, IDS[1]))).status_code == 200
    assert api.sim.stats()["requests_by_status"] == {"200": 1, "reset": 1}


async def test_reset_on_a_reused_keepalive_connection_hits_its_second_request(
    start_simulator: SimulatorFactory,
) -> None:
    api = await start_simulator(fault_by_id={IDS[0]: "reset_reused*1"})
    connections: list[object] = []

    async def note_connection(response: httpx.Response) -> None:
        connections.append(response.extensions.get("network_stream"))

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with client(limits=limits, event_hooks={"response": [note_connection]}) as http:
        first = await http.get(detections_url(api, IDS[0]))
        assert first.status_code == 200
        assert orjson.loads(first.content)["success"] is True
        # The next request goes out on the same kept-alive connection, which the server
        # drops as it arrives: the stale keep-alive race.
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.get(detections_url(api, IDS[1]))
        # A new connection works again, and so does the same id.
        assert (await http.get(detections_url(api, IDS[1]))).status_code == 200
        assert (await http.get(detections_url(api, IDS[0]))).status_code == 200
    assert connections[0] is not connections[1]  # the retry after the reset opened a new one
    assert api.sim.stats()["requests_by_status"] == {"200": 3, "reset": 1}


async def test_truncated_body_raises(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator(fault_by_id={IDS[0]: "truncate"})
    async with client() as http:
        with pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|complete message body"):
            await http.get(detections_url(api, IDS[0]))


async def test_truncated_body_on_the_wire_announces_the_full_length(
    start_simulator: SimulatorFactory,
) -> None:
    api = await start_simulator(fault_by_id={IDS[0]: "truncate"})
    port = int(api.base_url.split(":")[2].split("/")[0])
    path = detections_url(api, IDS[0]).split(str(port), 1)[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEFAULT_TOKEN}\r\n\r\n".encode()
    )
    raw = await asyncio.wait_for(reader.read(), timeout=5)  # until the server closes
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.startswith(b"content-length:")).split(
            b":"
        )[1]
    )
    assert head.startswith(b"HTTP/1.1 200 ")
    assert 0 < len(body) < length
    assert len(body) == length - length // 2


async def test_timeout_fault_outlasts_a_short_client_timeout(
    start_simulator: SimulatorFactory,
) -> None:
    api = await start_simulator(fault_by_id={IDS[0]: "timeout"}, slow_s=30.0)
    async with httpx.AsyncClient(headers=AUTH, timeout=0.3) as http:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            await http.get(detections_url(api, IDS[0]))
        assert time.monotonic() - started < 5  # the client gave up; nobody waited 30 s
        assert (await http.get(detections_url(api, IDS[1]))).status_code == 200


@pytest.mark.parametrize("status", [502, 520, 521, 522, 523, 524])
async def test_html_52x_pages(start_simulator: SimulatorFactory, status: int) -> None:
    api = await start_simulator(fault_by_id={IDS[0]: f"html_{status}"}, x_should_retry="true")
    async with client() as http:
        response = await http.get(detections_url(api, IDS[0]))
    assert response.status_code == status
    assert response.headers["content-type"].startswith("text/html")
    assert f"Error code {status}" in response.text
    assert response.headers["cf-ray"] in response.text
    assert response.headers["x-should-retry"] == "true"


async def test_json_5xx(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator(fault_by_id={IDS[0]: "json_503", IDS[1]: "json_500"})
    async with client() as http:
        for investigate_id, status in ((IDS[0], 503), (IDS[1], 500)):
            response = await http.get(detections_url(api, investigate_id))
            assert response.status_code == status
            assert response.headers["content-type"] == "application/json"
            assert response.json()["success"] is False


async def test_lockout_returns_429_971_for_every_call_until_it_ends(
    start_simulator: SimulatorFactory,
) -> None:
    api = await start_simulator(rate_limit=5, rate_window_s=2.0, lockout_s=1.5)
    async with client() as http:
        for investigate_id in IDS[:5]:
            ok = await http.get(detections_url(api, investigate_id))
            assert ok.status_code == 200
            assert "retry-after" not in ok.headers
            assert ok.headers["ratelimit-policy"] == '"burst";q=5;w=2'
        blocked_at = time.monotonic()
        refused: list[httpx.Response] = []

        async def block_over() -> bool:
            response = await http.get(detections_url(api, IDS[len(refused) % 20]))
            if response.status_code == 429:
                refused.append(response)
                return False
            assert response.status_code == 200
            return True

        # Call until the block ends; every call meanwhile must be refused.
        await wait_for(block_over, deadline_s=10, what="the lockout to end")
        assert time.monotonic() - blocked_at >= 1.5 - 0.05
    assert len(refused) >= 5
    for r in refused:
        assert r.json()["errors"][0]["code"] == 971
        assert 1 <= int(r.headers["retry-after"]) <= 2
        assert r.headers["ratelimit"].startswith('"default";r=0;')
    stats = api.sim.stats()
    assert stats["lockouts_triggered"] == 1
    assert stats["rate_limited_total"] == len(refused)
    assert stats["requests_by_status"] == {"200": 6, "429": len(refused)}


async def test_pipelined_requests_are_answered_in_order(start_simulator: SimulatorFactory) -> None:
    """A slow answer (a task) and a ready one (no task) on one connection keep their order."""
    api = await start_simulator(latency_by_id={IDS[0]: 0.3})
    port = int(api.base_url.split(":")[2].split("/")[0])
    path = detections_url(api, "{}").split(str(port), 1)[1]
    heads = b"".join(raw_get(path.format(i)) for i in (IDS[0], IDS[1], IDS[2]))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(heads)
    seen = []
    for _ in range(3):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        body = orjson.loads(await reader.readexactly(length))
        seen.append(
            next(h["value"] for h in body["result"]["headers"] if h["name"] == "Message-ID")
        )
    writer.close()
    assert [s[1:17] for s in seen] == [i[:16] for i in IDS[:3]]


async def test_search_pages_and_202_over_http(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator(catalog_size=23, search_pending_polls=1)
    url = f"{api.base_url}/accounts/{ACCOUNT}/email-security/investigate"
    ids: list[str] = []
    async with client() as http:
        params: dict[str, str] = {"per_page": "10"}
        while True:
            response = await http.get(url, params=params)
            if response.status_code == 202:  # the search is pending: poll the Location
                response = await http.get(response.headers["location"])
            assert response.status_code == 200
            doc = response.json()
            ids += [item["id"] for item in doc["result"]]
            if not doc["result_info"]["next"]:
                break
            params = {"per_page": "10", "cursor": doc["result_info"]["next"]}
    assert ids == [catalog_id(1, i) for i in range(23)]


async def test_stats_and_reset_over_http(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator(rate_limit=2)
    root = api.base_url.removesuffix("/client/v4")
    async with client() as http:
        for investigate_id in IDS[:3]:
            await http.get(detections_url(api, investigate_id))
        stats = (await http.get(f"{root}/__simulator/stats")).json()
        assert stats["lockouts_triggered"] == 1
        assert stats["requests_by_status"] == {"200": 2, "429": 1}
        assert (await http.post(f"{root}/__simulator/reset")).json()["requests_total"] == 0
        assert (await http.get(detections_url(api, IDS[0]))).status_code == 200


async def test_out_of_process_simulator_takes_faults_and_limits_from_flags() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "worker", "simulate", "--port", str(port)]
    command += ["--rate-limit", "3", "--rate-window-s", "60", "--lockout-s", "60"]
    command += ["--fault-id", f"{IDS[0]}=json_503*1", "--x-should-retry", "false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, env=env) as proc:
        try:
            assert proc.stderr is not None
            banner = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), timeout=20)
            assert b"rate limit 3 calls per 60 s" in banner
            base = (
                f"http://127.0.0.1:{port}/client/v4/accounts/{ACCOUNT}/email-security/investigate"
            )
            async with client() as http:
                first = await http.get(f"{base}/{IDS[0]}/detections")
                assert (first.status_code, first.headers["x-should-retry"]) == (503, "false")
                assert (await http.get(f"{base}/{IDS[0]}/detections")).status_code == 200
                assert (await http.get(f"{base}/{IDS[1]}/detections")).status_code == 200
                locked = await http.get(f"{base}/{IDS[2]}/detections")
                assert locked.status_code == 429
                assert locked.headers["retry-after"] == "60"
                stats = (await http.get(f"http://127.0.0.1:{port}/__simulator/stats")).json()
            assert stats["lockouts_triggered"] == 1
            assert stats["faults_by_kind"] == {"json_503": 1}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert proc.returncode == 0
