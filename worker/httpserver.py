"""A small asyncio HTTP/1.1 server for GET endpoints: the simulator and /metrics use it.

Hand-written on ``asyncio.Protocol`` because it is fast enough to never be the bottleneck
of a benchmark, and because the simulator needs socket-level faults (a reset, a body that
stops midway) that a framework hides. Requests on one connection are answered in order.

A handler may return a ready ``Response`` instead of a coroutine (a Response is awaitable
and yields itself): the server then writes it at once, without a task per request, which
is what keeps the simulator's zero-latency path cheap.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote

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
    520: "Unknown Error",
    521: "Web Server Is Down",
    522: "Connection Timed Out",
    523: "Origin Is Unreachable",
    524: "A Timeout Occurred",
}
_STATUS_LINES = {
    code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in _REASONS.items()
}
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a TCP RST


@dataclass(slots=True, eq=False)
class Connection:
    """One client connection as handlers see it: a note a handler may leave on it.

    The note lives as long as the connection (the simulator uses it to abort the next
    request of a connection: the stale keep-alive race).
    """

    note: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed request head. ``path`` is percent-decoded, ``raw_path`` is not.

    ``sequence`` is 1 for the first request of its connection, 2 for the next, ...
    """

    method: str
    raw_path: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    query_string: str = ""
    sequence: int = 1
    connection: Connection = field(default_factory=Connection)


@dataclass(slots=True)
class Response:
    """What to send back. ``fault`` makes the server misbehave on purpose.

    ``reset``: abort the connection with a TCP RST instead of answering. ``truncate``:
    send the head (with the full content-length) and half the body, then close.
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    fault: Literal["reset", "truncate"] | None = None

    def __await__(self) -> Generator[Any, None, Response]:
        """A Response is complete already: awaiting it returns it at once."""
        return self
        yield  # pragma: no cover - makes this a generator


Handler = Callable[[Request], Awaitable[Response]]


class _Connection(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._buffer = bytearray()
        self._queue: deque[Request] = deque()
        self._busy = False  # a handler's coroutine is running for this connection
        self._worker: asyncio.Task[None] | None = None
        self._transport: asyncio.Transport | None = None
        self._info = Connection()
        self._sequence = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._transport = None
        self._queue.clear()

    def eof_received(self) -> bool | None:
        return None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while self._transport is not None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._reply_and_close(400)
                return
            head = buffer[:end].decode("latin-1")
            del buffer[: end + 4]
            self._sequence += 1
            request = _parse_head(head, self._sequence, self._info)
            if request is None:
                self._reply_and_close(400)
                return
            # Bodies are not used by any endpoint; drop one if a client sends it.
            length = request.headers.get("content-length")
            if length:
                del buffer[: int(length) if length.isdigit() else 0]
            if self._busy:
                self._queue.append(request)
            else:
                self._dispatch(request)

    def _dispatch(self, request: Request) -> None:
        try:
            result = self._handler(request)
        except Exception:  # the outermost loop of a connection: log and answer 500
            log.exception("handler failed", extra={"path": request.raw_path})
            result = _internal_error()
        if isinstance(result, Response):
            self._send(request, result)
            return
        self._busy = True
        self._worker = asyncio.get_running_loop().create_task(self._complete(request, result))

    async def _complete(self, request: Request, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except Exception:  # the outermost loop of a connection: log and answer 500
            log.exception("handler failed", extra={"path": request.raw_path})
            response = _internal_error()
        self._busy = False
        self._send(request, response)
        while self._queue and not self._busy and self._transport is not None:
            self._dispatch(self._queue.popleft())

    def _send(self, request: Request, response: Response) -> None:
        transport = self._transport
        if transport is None:
            return
        if response.fault == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            transport.abort()
            self._transport = None
            return
        if response.fault == "truncate":
            transport.write(_encode(response, close=True)[: -max(1, len(response.body) // 2)])
            transport.close()
            self._transport = None
            return
        close = request.headers.get("connection", "").lower() == "close"
        transport.write(_encode(response, close=close))
        if close:
            transport.close()
            self._transport = None

    def _reply_and_close(self, status: int) -> None:
        if self._transport is not None:
            self._transport.write(_encode(Response(status=status, body=b""), close=True))
            self._transport.close()
            self._transport = None


def _internal_error() -> Response:
    return Response(status=500, body=b'{"error":"internal"}')


def _parse_head(head: str, sequence: int, connection: Connection) -> Request | None:
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
    raw_path, _, query_string = target.partition("?")
    raw_path = raw_path.partition("#")[0]
    return Request(
        method=method,
        raw_path=raw_path,
        path=unquote(raw_path) if "%" in raw_path else raw_path,
        query=dict(parse_qsl(query_string)) if query_string else {},
        headers=headers,
        query_string=query_string,
        sequence=sequence,
        connection=connection,
    )


def _encode(response: Response, *, close: bool) -> bytes:
    status = response.status
    status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Status\r\n".encode()
    head = f"content-type: {response.content_type}\r\ncontent-length: {len(response.body)}\r\n"
    for name, value in response.headers:
        head += f"{name}: {value}\r\n"
    if close:
        head += "connection: close\r\n"
    return status_line + (head + "\r\n").encode("latin-1") + response.body


async def serve(handler: Handler, *, host: str, port: int) -> asyncio.Server:
    """Start serving ``handler`` on host:port (port 0 picks a free one) and return the server."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Connection(handler), host=host, port=port)


def bound_port(server: asyncio.Server) -> int:
    """The TCP port a server listens on (useful after binding port 0)."""
    port: int = server.sockets[0].getsockname()[1]
    return port
