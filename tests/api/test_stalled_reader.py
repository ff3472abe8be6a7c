"""A client that stops reading a stream loses its connection, and its engine request ends at once.

Real HTTP (the direct ingress's uvicorn server in the test's loop) over the
simulated engine. The client sends a long streaming request on a socket with a
tiny receive buffer and then reads nothing: the server's buffers fill, uvicorn
pauses writing, and the stream waits. Before the write timeout, that stream
held its engine slot until the request timeout (600 s by default); and when a
stream was stopped without being closed, its engine request lived on until the
garbage collector finalized the suspended generator. The garbage collector is
off in these tests, so only an explicit close can free the slot.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket

import pytest

from loadtests.servers import free_port
from serving.config import LimitsConfig
from serving.deployments.direct.http_server import ConnectionLimits, DirectHTTPServer
from tests.inprocess import MODEL, seconds_until, simulated_app


@pytest.fixture
def no_gc():
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def start(write_timeout_s: float, request_timeout_s: float = 600.0):
    api = await simulated_app(
        {"decode_s_per_token": 0.0, "max_model_len": 1_000_000},
        limits=LimitsConfig(request_timeout_s=request_timeout_s, max_output_tokens=None),
    )
    port = free_port()
    http = await DirectHTTPServer.start(
        api.app, "127.0.0.1", port, graceful_timeout_s=1, limits=ConnectionLimits(write_timeout_s=write_timeout_s)
    )
    return api, http, port


def stalled_client(port: int) -> socket.socket:
    """A streaming request for many tokens on a socket that will never be read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.connect(("127.0.0.1", port))
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 500_000,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


async def engine_busy(api) -> bool:
    s = await api.stats()
    return s["running"] + s["waiting"] > 0


async def engine_idle(api) -> bool:
    return not await engine_busy(api) and api.serving.in_flight == 0


async def stalled_until_writes_pause(api) -> None:
    """Wait until the stream is running and then no longer advancing (the server's writes are paused)."""
    assert await seconds_until(lambda: engine_busy(api), 5.0) is not None, "the request never reached the engine"
    before = -1.0
    for _ in range(100):
        await asyncio.sleep(0.1)
        generated = (await api.stats())["generation_tokens"]
        if generated == before:
            return
        before = generated
    raise AssertionError("the stream never stalled: the client's buffers did not fill")


async def test_a_stalled_reader_is_dropped_at_the_write_timeout_and_its_request_ends(no_gc):
    api, http, port = await start(write_timeout_s=0.5)
    sock = stalled_client(port)
    try:
        await stalled_until_writes_pause(api)
        freed = await seconds_until(lambda: engine_idle(api), 3.0)
        stats = await api.stats()
        assert freed is not None, f"a stalled reader held its engine request past the write timeout: {stats}"
        assert stats["requests_cancelled"] == 1, stats
        # The server goes on serving.
        reply = await api.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.choices[0].message.content
    finally:
        sock.close()
        await http.stop()
        await api.aclose()


async def test_a_stalled_stream_that_times_out_frees_its_engine_request_without_the_gc(no_gc):
    # The write timeout is long here: the request timeout (1 s) ends the stream, while the
    # response is blocked writing. The engine request must end with it, not at the next GC.
    api, http, port = await start(write_timeout_s=60, request_timeout_s=1.0)
    sock = stalled_client(port)
    try:
        await stalled_until_writes_pause(api)
        freed = await seconds_until(lambda: engine_idle(api), 3.0)
        assert freed is not None, f"the timed-out stream's engine request outlived it: {await api.stats()}"
    finally:
        sock.close()
        await http.stop()
        await api.aclose()
