"""The worker's AsyncioTransport on real sockets: keep-alive, closed idle connections, TLS.

What every simulator fault does through it is in test_simulator_http.py (each test there
runs with both transports); this file covers what only a hand-made server can show.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress

import httpx
import orjson
import pytest
import trustme

from tests.conftest import SimulatorFactory, wait_for
from worker.cloudflare.client import DEFAULT_HEADERS, build_http_client
from worker.cloudflare.request_builder import RequestBuilder
from worker.cloudflare.transport import AsyncioTransport
from worker.settings import CloudflareSettings
from worker.simulator import DEFAULT_TOKEN, catalog_id

ACCOUNT = "023e105f4ecef8ad9ca31a8372d0c353"
LIMITS = httpx.Limits(max_connections=4, max_keepalive_connections=4)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A TCP server on a free port running ``handler`` per connection; yields the port.

    On exit it waits for the handlers (the clients have closed by then) and closes every
    server-side connection, so no socket outlives the test.
    """
    handlers: set[asyncio.Task[None]] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away: what some tests do on purpose
        finally:
            writer.close()
            with suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    srv = await asyncio.start_server(run, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        if handlers:
            _, pending = await asyncio.wait(handlers, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await srv.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answer(body: bytes, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_calls_reuse_one_keepalive_connection(start_simulator: SimulatorFactory) -> None:
    api = await start_simulator()
    transport = AsyncioTransport(limits=LIMITS)
    async with httpx.AsyncClient(transport=transport) as http:
        for i in range(20):
            url = (
                f"{api.base_url}/accounts/{ACCOUNT}/email-security/investigate/"
                f"{catalog_id(1, i)}/detections"
            )
            response = await http.get(url, headers={"authorization": f"Bearer {DEFAULT_TOKEN}"})
            assert response.status_code == 200
            assert orjson.loads(response.content)["success"] is True
    # Also proves the calls went through our backend, not httpx's own pool.
    assert transport.backend.connections_opened == 1


async def test_the_worker_http_pool_uses_the_asyncio_transport(
    start_simulator: SimulatorFactory,
) -> None:
    api = await start_simulator()
    settings = CloudflareSettings(base_url=api.base_url, api_token=DEFAULT_TOKEN)
    async with build_http_client(settings) as pool:
        url = f"{api.base_url}/accounts/{ACCOUNT}/email-security/investigate/{catalog_id(1, 0)}"
        auth = {"authorization": f"Bearer {DEFAULT_TOKEN}"}
        response = await pool.send(httpx.Request("GET", url + "/detections", headers=auth))
        assert response.status_code == 200
        stream = response.extensions["network_stream"]
        assert type(stream).__module__ == "worker.cloudflare.transport"


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def one_answer_then_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))  # keep-alive by default, then closed anyway
        await writer.drain()
        writer.close()

    transport = AsyncioTransport(limits=LIMITS)
    http = httpx.AsyncClient(transport=transport)
    async with server(one_answer_then_close) as port, http:
        first = await http.get(f"http://127.0.0.1:{port}/a")
        # Wait until the close has reached the client's socket, then call again: the pool
        # must notice the dead idle connection and open a new one, not fail the call.
        stream = first.extensions["network_stream"]

        async def close_seen() -> bool:
            return bool(stream.get_extra_info("is_readable"))

        await wait_for(close_seen, deadline_s=5, what="the server's close")
        second = await http.get(f"http://127.0.0.1:{port}/b")
    assert (first.status_code, second.status_code) == (200, 200)
    assert transport.backend.connections_opened == 2


async def test_chunked_and_large_bodies_arrive_whole() -> None:
    big = bytes(range(256)) * 8192  # 2 MiB, far more than one socket read

    async def chunked_then_big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await read_request(reader)
        writer.write(answer(big))
        await writer.drain()

    transport = AsyncioTransport(limits=LIMITS)
    http = httpx.AsyncClient(transport=transport)
    async with server(chunked_then_big) as port, http:
        assert (await http.get(f"http://127.0.0.1:{port}/chunked")).content == b"hello world"
        assert (await http.get(f"http://127.0.0.1:{port}/big")).content == big
    assert transport.backend.connections_opened == 1


async def test_a_silent_server_times_out_and_a_closed_port_refuses() -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client gives up and closes

    async with (
        server(never_answer) as port,
        httpx.AsyncClient(
            transport=AsyncioTransport(limits=LIMITS), timeout=httpx.Timeout(0.3)
        ) as http,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await http.get(f"http://127.0.0.1:{port}/slow")
    async with httpx.AsyncClient(transport=AsyncioTransport(limits=LIMITS)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{port}/gone")  # the server above is closed
        with pytest.raises(httpx.ConnectError):  # found by a tester: was an OverflowError
            await http.get("http://127.0.0.1:99999/out-of-range-port")


async def test_tls_verifies_the_server_certificate() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b'{"tls": true}'))
            await writer.drain()

    async with server(hello, server_context) as port:
        transport = AsyncioTransport(limits=LIMITS, verify=trusting)
        async with httpx.AsyncClient(transport=transport) as http:
            for _ in range(3):
                response = await http.get(f"https://localhost:{port}/tls")
                assert orjson.loads(response.content) == {"tls": True}
            tls = response.extensions["network_stream"].get_extra_info("ssl_object")
            assert tls is not None
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
        assert transport.backend.connections_opened == 1
        # The default trust store does not know this CA: the handshake must fail.
        async with httpx.AsyncClient(transport=AsyncioTransport(limits=LIMITS)) as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"https://localhost:{port}/tls")


async def test_the_worker_pool_bounds_the_whole_call_not_only_each_read() -> None:
    seen: list[bytes] = []

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n")
        for _ in range(20):  # a byte every 0.1 s: each read is quick, the whole is 2 s
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    settings = CloudflareSettings(
        base_url="http://127.0.0.1/client/v4", api_token="t", timeout_s=0.5
    )
    async with server(trickle) as port, build_http_client(settings) as pool:
        # Each byte comes well within the 0.5 s read timeout: only the whole-call one fires.
        request = RequestBuilder(f"http://127.0.0.1:{port}", {**DEFAULT_HEADERS, "x-test": "1"})
        with pytest.raises(httpx.ReadTimeout, match=r"no whole answer within 0\.5 s"):
            await pool.send(request.get("/slow"))
    head = seen[0].lower()
    assert b"user-agent: enrich-worker/" in head
    assert b"x-test: 1" in head
    assert b"host: 127.0.0.1:" in head


async def test_an_endless_answer_is_cut_at_the_size_cap() -> None:
    # Found by a new user: a base_url that answers without end grew the worker to GBs.
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()

    settings = CloudflareSettings(
        base_url="http://127.0.0.1/client/v4", api_token="t", timeout_s=60
    )
    async with server(endless) as port, build_http_client(settings) as pool:
        with pytest.raises(httpx.RemoteProtocolError, match="answer larger than"):
            await pool.send(httpx.Request("GET", f"http://127.0.0.1:{port}/endless"))


async def test_a_fast_sender_is_paused_not_buffered_without_end() -> None:
    sent = asyncio.Event()

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        body = b"y" * (8 * 1024 * 1024)
        writer.write(answer(body))
        await writer.drain()
        sent.set()

    transport = AsyncioTransport(limits=LIMITS)
    async with server(flood) as port:
        request = httpx.Request("GET", f"http://127.0.0.1:{port}/flood")
        response = await transport.handle_async_request(request)
        stream = response.extensions["network_stream"]
        # Read nothing more: the socket must stop being read near the high-water mark, so
        # the client buffers a bounded amount while the server waits to send the rest.
        protocol = stream._protocol

        async def paused() -> bool:
            return not protocol.transport.is_reading()

        await wait_for(paused, deadline_s=10, what="reading to pause")
        assert len(protocol.buffer) < 1024 * 1024
        assert not sent.is_set()
        body = await response.aread()  # reading on resumes the socket until the end
        assert len(body) == 8 * 1024 * 1024
        await response.aclose()
        await transport.aclose()
