"""How many requests per second the simulator serves on one core at zero latency.

The simulator runs in its own process pinned to CPU 0 (``enrich-worker simulate``, the same
code people and benchmarks use); this process is the load generator, pinned to CPU 1. It
speaks HTTP/1.1 itself over raw asyncio sockets (an HTTP client library would be the
bottleneck, not the simulator): ``--connections`` keep-alive connections, one request in
flight on each (no pipelining), each request a detections call for a different catalogue id
(cold payload cache, like a worker enriching fresh ids; ``--hot-ids N`` cycles N ids
instead). It stops after ``--requests`` answers or ``--seconds``, whichever comes first.

Prints one line for people and one JSON line, and writes the JSON to
bench/results/simulator.json. ``server_cpu_share`` is the simulator's CPU time over the
wall time: close to 1.0 means the simulator's core was saturated, i.e. the figure is the
simulator's capacity and not the load generator's.

    .venv/bin/python bench/simulator_bench.py [--requests 200000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.simulator import API_PREFIX, DEFAULT_TOKEN, catalog_id  # noqa: E402

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
RESULTS = ROOT / "bench" / "results" / "simulator.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200_000, help="stop after N answers")
    parser.add_argument("--seconds", type=float, default=20.0, help="stop after S seconds")
    parser.add_argument("--connections", type=int, default=32, help="keep-alive connections")
    parser.add_argument("--hot-ids", type=int, default=0, help="cycle N ids (0: all distinct)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--target", type=int, default=5000, help="requests/s to reach (exit 1 below it)"
    )
    parser.add_argument(
        "--sim-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for the simulator, e.g. --sim-arg=--payload-variants=0 (repeatable)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpus = (cpus[0], set(cpus[1:])) if len(cpus) > 1 else (None, None)
    port = _free_port()
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "worker", "simulate", "--port", str(port)),
            # A limit that is never reached: the limiter's cost is measured, no 429 is sent.
            *("--seed", str(args.seed), "--rate-limit", str(10**9)),
            *args.sim_arg,
        ],
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    try:
        if server_cpu is not None and client_cpus:
            os.sched_setaffinity(proc.pid, {server_cpu})
            os.sched_setaffinity(0, client_cpus)
        _wait_for_port(port, proc, deadline_s=15)
        n_ids = args.hot_ids or args.requests
        print(f"preparing {n_ids} ids ...", file=sys.stderr)
        heads = [_request_head(port, catalog_id(args.seed, i)) for i in range(n_ids)]
        cpu_before, client_before = _cpu_seconds(proc.pid), time.process_time()
        result = asyncio.run(_drive(port, heads, args))
        cpu_after = _cpu_seconds(proc.pid)
        user_s, system_s = (a - b for a, b in zip(cpu_after, cpu_before, strict=True))
        cpu_used = user_s + system_s
        client_cpu = time.process_time() - client_before
        stats = _get_stats(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    wall = result["wall_s"]
    report: dict[str, Any] = {
        "requests": result["answers"],
        "wall_s": round(wall, 3),
        "requests_per_s": round(result["answers"] / wall),
        "server_cpu_s": round(cpu_used, 3),
        "server_user_s": round(user_s, 3),
        "server_system_s": round(system_s, 3),
        "server_cpu_share": round(cpu_used / wall, 3),
        "client_cpu_share": round(client_cpu / wall, 3),
        "server_cpu_us_per_request": round(cpu_used / max(1, result["answers"]) * 1e6, 1),
        "server_capacity_per_cpu_s": round(result["answers"] / max(cpu_used, 1e-9)),
        "target_requests_per_s": args.target,
        "statuses": result["statuses"],
        "connections": args.connections,
        "simulator_flags": args.sim_arg,
        "distinct_ids": n_ids,
        "server_pinned_cpu": server_cpu,
        "client_cpus": sorted(client_cpus) if client_cpus else None,
        "simulator_stats_requests_total": stats.get("requests_total"),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"simulator: {report['requests_per_s']} requests/s on one core "
        f"({report['requests']} answers in {report['wall_s']} s over {args.connections} "
        f"connections, server CPU share {report['server_cpu_share']}, "
        f"{report['server_cpu_us_per_request']} us CPU per request, i.e. "
        f"{report['server_capacity_per_cpu_s']} per CPU-second; {report['cpu_model']})"
    )
    print(json.dumps(report, sort_keys=True))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    bad = {k: v for k, v in result["statuses"].items() if k != "200"}
    return 1 if bad or report["requests_per_s"] < args.target else 0


def _request_head(port: int, investigate_id: str) -> bytes:
    path = f"{API_PREFIX}/accounts/{ACCOUNT}/email-security/investigate/{investigate_id}/detections"
    return (
        f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: */*\r\n"
        f"accept-encoding: gzip, deflate\r\nconnection: keep-alive\r\n"
        f"user-agent: simulator-bench\r\nauthorization: Bearer {DEFAULT_TOKEN}\r\n\r\n"
    ).encode()


class _Client(asyncio.Protocol):
    """One keep-alive connection: send a request, read its whole answer, send the next."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send_next()

    def _send_next(self) -> None:
        head = self.shared.next_head()
        if head is None:
            assert self.transport is not None
            self.transport.close()
            return
        assert self.transport is not None
        self.transport.write(head)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        length = 0
        for line in head.split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if len(self.buffer) < end + 4 + length:
            return
        self.shared.statuses[head[9:12].decode()] += 1
        del self.buffer[: end + 4 + length]
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Shared:
    def __init__(self, heads: list[bytes], total: int, deadline: float) -> None:
        self.heads = heads
        self.total = total
        self.deadline = deadline
        self.sent = 0
        self.statuses: Counter[str] = Counter()

    def next_head(self) -> bytes | None:
        if self.sent >= self.total or (self.sent % 256 == 0 and time.monotonic() > self.deadline):
            return None
        head = self.heads[self.sent % len(self.heads)]
        self.sent += 1
        return head


async def _drive(port: int, heads: list[bytes], args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    shared = _Shared(heads, args.requests, start + args.seconds)
    clients = []
    for _ in range(args.connections):
        _, client = await loop.create_connection(lambda: _Client(shared), "127.0.0.1", port)
        clients.append(client)
    await asyncio.wait_for(asyncio.gather(*(c.closed for c in clients)), args.seconds + 30)
    wall = time.monotonic() - start
    return {"answers": sum(shared.statuses.values()), "wall_s": wall, "statuses": shared.statuses}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], *, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the simulator exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the simulator did not listen on {port} within {deadline_s} s")


def _get_stats(port: int) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /__simulator/stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    stats: dict[str, Any] = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return stats


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
