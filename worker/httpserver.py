"""A small asyncio HTTP/1.1 server for GET endpoints: the simulator and /metrics use it.

Hand-written on ``asyncio.Protocol`` because it is fast enough to never be the bottleneck
of a benchmark, and because the simulator needs socket-level faults (a reset, a body that
stops midway) that a framework hides. Requests on one connection are answered in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16_384
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request head. ``path`` is percent-decoded, ``raw_path`` is not."""

    method: str
    raw_path: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(slots=True)
class Response:
    """What to send back. ``fault`` makes the server misbehave on purpose."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    fault: Literal["reset", "truncate"] | None = None


Handler = Callable[[Request], Awaitable[Response]]


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._buffer = bytearray()
        self._queue: deque[Request] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._reply_and_close(400)
                break
            head = bytes(self._buffer[:end]).decode("latin-1")
            del self._buffer[: end + 4]
            request = _parse_head(head)
            if request is None:
                self._reply_and_close(400)
                return
            # Bodies are not used by any endpoint; drop one if a client sends it.
            length = int(request.headers.get("content-length", "0") or 0)
            del self._buffer[:length]
            self._queue.append(request)
        if self._queue:
            self._ensure_worker()

    def _reply_and_close(self, status: int) -> None:
        if self._transport is not None:
            self._transport.write(_encode(Response(status=status, body=b""), close=True))
            self._transport.close()

    def eof_received(self) -> bool | None:
        return None

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        while self._queue and self._transport is not None:
            request = self._queue.popleft()
            close = request.headers.get("connection", "").lower() == "close"
            try:
                response = await self._handler(request)
            except Exception:  # the outermost loop of a connection: log and answer 500
                log.exception("handler failed", extra={"path": request.raw_path})
                response = Response(status=500, body=b'{"error":"internal"}')
            transport = self._transport
            if transport is None:
                return
            if response.fault == "reset":
                transport.abort()
                return
            if response.fault == "truncate":
                transport.write(_encode(response, close=True)[: -max(1, len(response.body) // 2)])
                transport.close()
                return
            transport.write(_encode(response, close=close))
            if close:
                transport.close()
                return


def _parse_head(head: str) -> Request | None:
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        headers[name.strip().lower()] = value.strip()
    split = urlsplit(target)
    return Request(
        method=method,
        raw_path=split.path,
        path=unquote(split.path),
        query=dict(parse_qsl(split.query)),
        headers=headers,
    )


def _encode(response: Response, *, close: bool) -> bytes:
    reason = _REASONS.get(response.status, "Status")
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"content-type: {response.content_type}",
        f"content-length: {len(response.body)}",
    ]
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body


async def serve(handler: Handler, *, host: str, port: int) -> asyncio.Server:
    """Start serving ``handler`` on host:port (port 0 picks a free one) and return the server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(handler), host=host, port=port)


def bound_port(server: asyncio.Server) -> int:
    """The TCP port a server listens on (useful after binding port 0)."""
    port: int = server.sockets[0].getsockname()[1]
    return port
