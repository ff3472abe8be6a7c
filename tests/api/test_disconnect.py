"""A client that leaves cancels its engine request, whatever the request was waiting for.

Real HTTP (the direct ingress's uvicorn server in the test's loop) over the
simulated engine: the client closes its socket mid-request; within 1 s the
engine has no request running or queued and counts one cancelled. Before the
disconnect watcher, a non-streaming request generated all its tokens and a
stream still waiting for its first token held its slot, for nobody.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from loadtests.servers import free_port
from serving.deployments.direct.http_server import DirectHTTPServer
from tests.inprocess import MODEL, seconds_until, simulated_app


@pytest.fixture
async def serve():
    """`await serve(engine_args)`: the app on real HTTP; stopped at the test's end."""
    started = []

    async def start(engine_args: dict):
        api = await simulated_app({"decode_s_per_token": 0.05, "max_model_len": 4096, **engine_args})
        port = free_port()
        started.append((api, await DirectHTTPServer.start(api.app, "127.0.0.1", port, graceful_timeout_s=1)))
        return api, port

    yield start
    for api, http in started:
        await http.stop()
        await api.aclose()


async def send_then_close(port: int, body: dict, after_s: float) -> None:
    """A raw HTTP request; the socket is closed `after_s` later, before any answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.close()
    await writer.wait_closed()


@pytest.mark.parametrize(
    "body, engine",
    [
        ({"max_tokens": 200}, {}),  # non-streaming, running
        ({"max_tokens": 200, "stream": True}, {"ttft_base_s": 3.0}),  # a stream before its first token
        ({"max_tokens": 200}, {"ttft_base_s": 3.0}),  # non-streaming, in prefill
    ],
    ids=["non-stream-running", "stream-before-first-token", "non-stream-prefill"],
)
async def test_disconnect_cancels_the_engine_request_within_a_second(serve, body, engine):
    # 0.05 s per token: 200 tokens take 10 s; a first token after 3 s where asked for.
    api, port = await serve(engine)
    request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True, **body}
    client = asyncio.create_task(send_then_close(port, request, after_s=0.5))
    assert await seconds_until(lambda: _busy(api), 2.0) is not None, "the request never reached the engine"
    await client
    freed = await seconds_until(lambda: _idle(api), 1.0)
    stats = await api.stats()
    assert freed is not None, f"the engine request outlived its client by over 1 s: {stats}"
    assert stats["requests_cancelled"] == 1 and api.serving.in_flight == 0, stats


async def _busy(api) -> bool:
    s = await api.stats()
    return s["running"] + s["waiting"] > 0


async def _idle(api) -> bool:
    s = await api.stats()
    return s["running"] + s["waiting"] == 0 and api.serving.in_flight == 0
