#!/usr/bin/env python3
"""Readiness probe for a Kafka broker, speaking the Kafka wire protocol.

Usage: kafka_ready.py [-q] [--timeout SECONDS] HOST:PORT

One attempt: connect, send ApiVersions (v2), pick a Metadata version from the
non-flexible range v4..v8 that the broker advertises (Kafka 4.x dropped
Metadata v0-v3), send a Metadata request for all topics, parse the whole
response and require at least one broker in it.

Exit status: 0 ready, 1 not ready (connection refused, timeout, malformed or
error response, no brokers), 2 bad usage.

Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time

API_METADATA = 3
API_VERSIONS = 18
API_VERSIONS_VERSION = 2  # non-flexible; the broker answers v0-shaped on error
METADATA_MIN, METADATA_MAX = 4, 8  # non-flexible Metadata versions we encode
CLIENT_ID = "kafka-ready-probe"
MAX_RESPONSE = 64 * 1024 * 1024


class ProbeError(Exception):
    """The broker is not (yet) answering like a ready Kafka broker."""


class Reader:
    """Cursor over a response body with Kafka primitive decoders."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProbeError(
                f"truncated response: need {n} bytes at offset {self.pos}, "
                f"have {len(self.data) - self.pos}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def _int(self, size: int) -> int:
        return int.from_bytes(self._take(size), "big", signed=True)

    def int8(self) -> int:
        return self._int(1)

    def int16(self) -> int:
        return self._int(2)

    def int32(self) -> int:
        return self._int(4)

    def boolean(self) -> bool:
        return self.int8() != 0

    def nullable_string(self) -> str | None:
        n = self.int16()
        if n == -1:
            return None
        if n < -1:
            raise ProbeError(f"bad string length {n}")
        return self._take(n).decode("utf-8", errors="replace")

    def string(self) -> str:
        s = self.nullable_string()
        if s is None:
            raise ProbeError("unexpected null string")
        return s

    def array_len(self) -> int:
        n = self.int32()
        if n < -1 or n > len(self.data):
            raise ProbeError(f"bad array length {n}")
        return max(n, 0)

    def int32_array(self) -> list[int]:
        return [self.int32() for _ in range(self.array_len())]

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProbeError(f"{len(self.data) - self.pos} unexpected trailing bytes in response")


def encode_string(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    raw = s.encode("utf-8")
    return struct.pack(">h", len(raw)) + raw


class Connection:
    def __init__(self, host: str, port: int, deadline: float) -> None:
        self.deadline = deadline
        self.correlation_id = 0
        try:
            self.sock = socket.create_connection((host, port), timeout=self._left())
        except OSError as exc:
            raise ProbeError(f"connect to {host}:{port} failed: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProbeError("timed out")
        return left

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self.sock.settimeout(self._left())
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError as exc:
                raise ProbeError("timed out waiting for response") from exc
            except OSError as exc:
                raise ProbeError(f"receive failed: {exc}") from exc
            if not chunk:
                raise ProbeError("connection closed by broker")
            buf += chunk
        return bytes(buf)

    def request(self, api_key: int, api_version: int, body: bytes) -> Reader:
        """Send a request with header v1 and return a reader past header v0."""
        self.correlation_id += 1
        header = struct.pack(">hhi", api_key, api_version, self.correlation_id)
        header += encode_string(CLIENT_ID)
        payload = header + body
        self.sock.settimeout(self._left())
        try:
            self.sock.sendall(struct.pack(">i", len(payload)) + payload)
        except TimeoutError as exc:
            raise ProbeError("timed out sending request") from exc
        except OSError as exc:
            raise ProbeError(f"send failed: {exc}") from exc
        (size,) = struct.unpack(">i", self._recv_exact(4))
        if size < 4 or size > MAX_RESPONSE:
            raise ProbeError(f"bad response size {size}")
        reader = Reader(self._recv_exact(size))
        got = reader.int32()
        if got != self.correlation_id:
            raise ProbeError(f"correlation id mismatch: sent {self.correlation_id}, got {got}")
        return reader


def api_versions(conn: Connection) -> dict[int, tuple[int, int]]:
    r = conn.request(API_VERSIONS, API_VERSIONS_VERSION, b"")
    error = r.int16()
    ranges: dict[int, tuple[int, int]] = {}
    for _ in range(r.array_len()):
        key, lo, hi = r.int16(), r.int16(), r.int16()
        ranges[key] = (lo, hi)
    if error == 35:
        # UNSUPPORTED_VERSION: the body is v0-shaped (no throttle time); we
        # only needed the version ranges, which it still carries.
        r.done()
    else:
        r.int32()  # throttle_time_ms (v1+)
        r.done()
        if error != 0:
            raise ProbeError(f"ApiVersions error code {error}")
    if not ranges:
        raise ProbeError("ApiVersions response lists no APIs")
    return ranges


Broker = tuple[int, str, int]  # node_id, host, port
MetadataSummary = tuple[list[Broker], str | None, int, int]  # brokers, cluster, controller, topics


def metadata(conn: Connection, version: int) -> MetadataSummary:
    body = struct.pack(">i", -1)  # topics: null = all topics
    body += struct.pack(">b", 0)  # allow_auto_topic_creation = false
    if version >= 8:
        body += struct.pack(">bb", 0, 0)  # include cluster/topic authorized ops
    r = conn.request(API_METADATA, version, body)
    r.int32()  # throttle_time_ms (v3+)
    brokers: list[Broker] = []
    for _ in range(r.array_len()):
        node_id = r.int32()
        host = r.string()
        port = r.int32()
        r.nullable_string()  # rack
        brokers.append((node_id, host, port))
    cluster_id = r.nullable_string()
    controller_id = r.int32()
    n_topics = r.array_len()
    for _ in range(n_topics):
        r.int16()  # error_code
        r.string()  # name
        r.boolean()  # is_internal
        for _ in range(r.array_len()):
            r.int16()  # error_code
            r.int32()  # partition_index
            r.int32()  # leader_id
            if version >= 7:
                r.int32()  # leader_epoch
            r.int32_array()  # replica_nodes
            r.int32_array()  # isr_nodes
            if version >= 5:
                r.int32_array()  # offline_replicas
        if version >= 8:
            r.int32()  # topic_authorized_operations
    if version >= 8:
        r.int32()  # cluster_authorized_operations
    r.done()
    return brokers, cluster_id, controller_id, n_topics


def probe(host: str, port: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    conn = Connection(host, port, deadline)
    try:
        ranges = api_versions(conn)
        if API_METADATA not in ranges:
            raise ProbeError("broker does not advertise the Metadata API")
        lo, hi = ranges[API_METADATA]
        version = min(hi, METADATA_MAX)
        if version < max(lo, METADATA_MIN):
            raise ProbeError(
                f"broker Metadata versions {lo}..{hi} do not overlap {METADATA_MIN}..{METADATA_MAX}"
            )
        brokers, cluster_id, controller_id, n_topics = metadata(conn, version)
    finally:
        conn.close()
    if not brokers:
        raise ProbeError("Metadata response lists no brokers")
    listed = ",".join(f"{nid}@{h}:{p}" for nid, h, p in brokers)
    return (
        f"ready: metadata v{version}, cluster_id={cluster_id}, "
        f"brokers=[{listed}], controller={controller_id}, topics={n_topics}"
    )


def parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {target!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Exit 0 if a Kafka broker answers a Metadata request with at least one broker."
    )
    parser.add_argument("target", help="HOST:PORT of the broker, e.g. 127.0.0.1:19092")
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds for the whole attempt (default 3)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    try:
        host, port = parse_target(args.target)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        summary = probe(host, port, args.timeout)
    except ProbeError as exc:
        if not args.quiet:
            print(f"not ready: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
