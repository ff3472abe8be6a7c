"""The direct ingress's HTTP server bounds what a connection may hold (GuardedHttpToolsProtocol).

Real sockets against `DirectHTTPServer` in the test's loop, with small limits so
the test is quick. Before these limits: half-sent headers held a connection for
good (> 40 s measured), a 2 MB header and 20,000 headers were answered 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from loadtests.servers import free_port
from serving.deployments.direct.http_server import ConnectionLimits, DirectHTTPServer
from tests.inprocess import MODEL, simulated_app

USER = [{"role": "user", "content": "hi"}]
LIMITS = ConnectionLimits(
    max_connections=4, max_header_bytes=4096, max_headers=20, header_timeout_s=0.5, body_timeout_s=0.5
)


@pytest.fixture
async def port():
    api = await simulated_app()
    p = free_port()
    server = await DirectHTTPServer.start(api.app, "127.0.0.1", p, graceful_timeout_s=1, limits=LIMITS)
    yield p
    await server.stop()
    await api.aclose()


async def exchange(port: int, *parts: bytes, pause_s: float = 0.0, timeout_s: float = 5.0) -> bytes:
    """Send `parts` (pausing between them) while reading; what arrived until the server closed or `timeout_s`.

    Reading runs from the start: a server that refuses mid-request closes while
    the client still writes, and a reset would drop an answer not read yet.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received: list[bytes] = []

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.append(chunk)

    reading = asyncio.create_task(read_all())
    try:
        for part in parts:
            try:
                writer.write(part)
                await writer.drain()
            except ConnectionError:
                break  # the server closed: its answer is (being) read
            await asyncio.sleep(pause_s)
        await asyncio.wait_for(reading, timeout_s)
        return b"".join(received)
    finally:
        reading.cancel()
        writer.close()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def chat_request(extra_headers: bytes = b"", body: bytes | None = None) -> bytes:
    body = body if body is not None else json.dumps({"model": MODEL, "messages": USER, "max_tokens": 4}).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + extra_headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


async def test_an_ordinary_request_and_keep_alive_still_work(port):
    assert status(await exchange(port, chat_request())) == 200
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):  # two requests on one connection
        writer.write(get)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert status(head) == 200
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()


async def test_half_sent_headers_are_cut_at_the_header_timeout(port):
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    response = await exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    assert status(response) == 408 and loop.time() - t0 < 2.0


async def test_a_slow_drip_of_headers_is_cut_too(port):
    drip = [b"GET /health HTTP/1.1\r\n"] + [b"X-A%d: b\r\n" % i for i in range(15)]
    response = await exchange(port, *drip, pause_s=0.1)  # 1.5 s in all, each piece within 0.5 s
    assert status(response) == 408


async def test_huge_header_is_431(port):
    response = await exchange(port, chat_request(b"X-Big: " + b"a" * 2_000_000 + b"\r\n"))
    assert status(response) == 431


async def test_many_headers_are_431(port):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(20_000))
    assert status(await exchange(port, chat_request(many))) == 431


async def test_a_stalled_body_is_408(port):
    body = json.dumps({"model": MODEL, "messages": USER, "max_tokens": 4}).encode()
    head = chat_request(body=body)[: -len(body)]
    response = await exchange(port, head + body[:10])  # the rest never comes
    assert status(response) == 408


async def test_a_slow_but_steady_body_is_fine(port):
    body = json.dumps({"model": MODEL, "messages": USER, "max_tokens": 4, "seed": 1}).encode()
    head = chat_request(body=body)[: -len(body)]
    pieces = [head] + [body[i : i + 8] for i in range(0, len(body), 8)]
    assert status(await exchange(port, *pieces, pause_s=0.1)) == 200


async def test_connections_over_the_cap_are_refused(port):
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(LIMITS.max_connections)]
    try:
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        response = await asyncio.wait_for(reader.read(), 2)
        writer.close()
        assert status(response) == 503
    finally:
        for _, w in idle:
            w.close()
    await asyncio.sleep(0.1)
    assert status(await exchange(port, chat_request())) == 200  # room again
