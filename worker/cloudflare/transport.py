"""httpx's HTTP/1.1 transport over plain asyncio sockets instead of anyio streams.

httpx sends each call through httpcore (connection pool, h11 parsing) and httpcore reads
and writes its sockets through anyio. On a local answer of a few kB, anyio's cancel scopes
and stream wrappers cost about a third of the CPU of a call (bench/README.md). This module
keeps httpx and httpcore exactly as they are and gives httpcore's pool a network backend
built on an ``asyncio.Protocol``: the same requests, the same exceptions (httpcore's
``ReadTimeout``, ``ReadError``, ... which httpx turns into its own), TLS through
``loop.start_tls`` with httpx's default SSL context.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import httpcore
import httpx

# httpcore's name for a socket option: (level, option, value) as socket.setsockopt takes.
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


K = TypeVar("K", bound=Hashable)

_HIGH_WATER = 256 * 1024
"""Bytes buffered before the socket stops being read (the kernel then slows the sender)."""


class DeadlineWatch(Generic[K]):
    """Deadlines of many waits, kept by one periodic check instead of a timer each.

    A timer per wait (``asyncio.timeout``) leaves a cancelled timer in the loop's heap for
    every wait that ended in time, some 30,000 at ~1,000 calls/s and a 30 s timeout, and
    keeping that heap cost several % of the worker's CPU (bench/README.md). Here a wait
    notes its deadline; a check that runs while waits are pending calls ``expire`` on the
    late ones, at most a quarter of the shortest timeout (and 1 s) after their deadline.
    Used for the sockets' read and write timeouts here and the whole-call timeout
    (``worker.cloudflare.client.Deadlines``).
    """

    def __init__(self, expire: Callable[[K], None]) -> None:
        self._expire_one = expire
        self._deadlines: dict[K, float] = {}
        self._expired: set[K] = set()
        self._period_s = 1.0
        self._check: asyncio.TimerHandle | None = None

    def watch(self, key: K, timeout_s: float) -> None:
        """Expire ``key`` once ``timeout_s`` has passed, unless it is forgotten first."""
        loop = asyncio.get_running_loop()
        self._deadlines[key] = loop.time() + timeout_s
        self._period_s = min(self._period_s, max(timeout_s / 4, 0.001))
        if self._check is None:
            self._check = loop.call_later(self._period_s, self._expire, loop)

    def forget(self, key: K) -> bool:
        """Stop watching ``key``; True if it had expired."""
        self._deadlines.pop(key, None)
        if key in self._expired:
            self._expired.discard(key)
            return True
        return False

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = [key for key, deadline in self._deadlines.items() if deadline <= now]
        for key in late:
            del self._deadlines[key]
            self._expired.add(key)
            self._expire_one(key)
        self._check = (
            loop.call_later(self._period_s, self._expire, loop) if self._deadlines else None
        )


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _SocketProtocol(asyncio.Protocol):
    """Buffers what arrives on one connection until the stream reads it (at most ~256 kB)."""

    def __init__(self, timeouts: DeadlineWatch[asyncio.Future[None]]) -> None:
        self._timeouts = timeouts
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.writable = True
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too: HTTP/1.1 has no use for a half-closed socket

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self.writable = True
        self._wake()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        self._wake()

    async def wait(self, timeout: float | None) -> None:
        """Until data, EOF, an error or room to write arrives; TimeoutError after ``timeout``."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        if timeout is not None:
            self._timeouts.watch(waiter, timeout)
        try:
            await waiter
        finally:
            self._waiter = None
            self._timeouts.forget(waiter)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection as httpcore reads and writes it."""

    def __init__(self, protocol: _SocketProtocol) -> None:
        self._protocol = protocol

    @property
    def _transport(self) -> asyncio.Transport:
        transport = self._protocol.transport
        assert transport is not None
        return transport

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        while not protocol.buffer:
            if protocol.error is not None:
                raise httpcore.ReadError(str(protocol.error) or type(protocol.error).__name__)
            if protocol.eof:
                return b""
            try:
                await protocol.wait(timeout)
            except TimeoutError:
                raise httpcore.ReadTimeout("timed out reading the answer") from None
        data = bytes(protocol.buffer[:max_bytes])
        del protocol.buffer[:max_bytes]
        transport = self._transport
        paused = not transport.is_reading() and not transport.is_closing()
        if paused and len(protocol.buffer) <= _HIGH_WATER // 2:
            transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.error is not None or self._transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self._transport.write(buffer)
        while not protocol.writable:  # the kernel's buffer is full: let it drain
            try:
                await protocol.wait(timeout)
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out sending the request") from None
        if protocol.error is not None:
            raise httpcore.WriteError(str(protocol.error) or type(protocol.error).__name__)

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport,
                    self._protocol,
                    ssl_context,
                    server_hostname=server_hostname,
                )
        except TimeoutError:
            self._transport.close()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            self._transport.close()
            raise httpcore.ConnectError(str(exc)) from exc
        assert isinstance(tls, asyncio.Transport)
        self._protocol.transport = tls
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle keep-alive connection with something to read has been closed (or
            # spoken to out of turn) by the server: httpcore then opens a new one.
            protocol = self._protocol
            return bool(protocol.buffer) or protocol.eof or self._transport.is_closing()
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info in ("ssl_object", "socket"):
            return self._transport.get_extra_info(info)
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Opens httpcore's connections as asyncio transports."""

    def __init__(self) -> None:
        self.connections_opened = 0
        """How many connections this backend opened (tests check keep-alive with it)."""
        self._timeouts: DeadlineWatch[asyncio.Future[None]] = DeadlineWatch(_time_out)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = None if local_address is None else (local_address, 0)
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _SocketProtocol(self._timeouts), host, port, local_addr=local
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except (OSError, OverflowError) as exc:  # OverflowError: a port past 65535
            raise httpcore.ConnectError(str(exc)) from exc
        self.connections_opened += 1
        sock = transport.get_extra_info("socket")
        for option in socket_options or ():
            sock.setsockopt(*option)
        return _AsyncioStream(protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (HTTP/1.1, no proxy) whose pool uses ``AsyncioBackend``.

    httpx offers no setting for httpcore's network backend, so the pool it builds is
    replaced by the same pool with ours; everything else (request mapping, exception
    mapping, streaming of answers) is httpx's own code. A test checks that calls really go
    through ``backend``, so an httpx release that renames its pool fails loudly.
    """

    def __init__(self, *, limits: httpx.Limits, verify: ssl.SSLContext | bool = True) -> None:
        context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=context, limits=limits, trust_env=False)
        self.backend = AsyncioBackend()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=self.backend,
        )
