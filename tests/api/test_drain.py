"""A stopping replica drains: requests in progress get the drain time, then end with a clear 503.

Real HTTP (the direct ingress's uvicorn server in the test's loop) over the
simulated engine, stopped as `LLMServer`'s shutdown stops it: the HTTP server
stops accepting while `OpenAIServing.drain` runs. Before, a stream longer than
the graceful timeout was cut with neither an error event nor `[DONE]`, and a
client could not tell a cut stream from a finished one.
"""

from __future__ import annotations

import asyncio

import httpx

from loadtests import sse
from loadtests.servers import free_port
from serving.deployments.direct.http_server import DirectHTTPServer
from serving.deployments.serve_stop import drain_time_s
from tests.inprocess import MODEL, simulated_app

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "ignore_eos": True}


async def test_drain_lets_short_requests_finish_and_ends_long_ones_with_503():
    # 0.02 s per token: 10 tokens take 0.2 s (finish within the drain), 2000 take 40 s (do not).
    api = await simulated_app({"decode_s_per_token": 0.02, "max_model_len": 4096})
    port = free_port()
    http = await DirectHTTPServer.start(api.app, "127.0.0.1", port, graceful_timeout_s=10)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with httpx.AsyncClient(timeout=30) as client:

        async def stream(max_tokens: int) -> list:
            async with client.stream("POST", url, json={**CHAT, "max_tokens": max_tokens, "stream": True}) as r:
                assert r.status_code == 200
                return sse.parse(await r.aread())

        short = asyncio.create_task(stream(10))
        long = asyncio.create_task(stream(2000))
        whole = asyncio.create_task(client.post(url, json={**CHAT, "max_tokens": 2000}))
        while api.serving.in_flight < 3:
            await asyncio.sleep(0.01)

        stopping = asyncio.ensure_future(http.stop())
        ended = await api.serving.drain(1.0)
        await asyncio.wait_for(stopping, 10)
        assert ended == 2

        events = await short
        assert events[-1] == sse.DONE and all("error" not in e for e in events[:-1])
        events = await long
        assert events[-1] == sse.DONE, events[-3:]
        err = events[-2]["error"]
        assert err["code"] == "server_shutting_down" and err["type"] == "service_unavailable", err
        assert len(events) > 3  # it streamed before it was ended
        r = await whole
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["code"] == "server_shutting_down"

    stats = await api.stats()
    assert stats["running"] + stats["waiting"] == 0 and api.serving.in_flight == 0, stats
    # and a request arriving once the drain time is over is refused the same way
    r = await api.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down", r.text
    await api.aclose()


async def test_a_request_arriving_after_an_idle_drain_is_served():
    """Nothing in flight: the drain ends at once, and a request that still arrives (a kept-alive
    connection, a stale router) is served while the engine runs. Before, it got 503 server_shutting_down
    (one of tests/e2e/test_faults.py's redeploy requests, in CI)."""
    api = await simulated_app({"max_model_len": 512})
    assert await api.serving.drain(5.0) == 0
    r = await api.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
    assert r.status_code == 200, r.text
    await api.aclose()


def test_drain_time_leaves_room_before_serve_kills_the_replica():
    assert drain_time_s(30) == 23 and drain_time_s(120) == 113
    assert drain_time_s(8) == 3 and drain_time_s(1) == 0


async def test_requests_waiting_in_the_fair_queue_end_with_the_drain():
    """Requests waiting for the engine (the fair queue, serving/api/fair_queue.py) get the 503 at the drain's
    end as those in progress do; before, they were started one by one as the ended ones left the engine."""
    api = await simulated_app({"decode_s_per_token": 0.02, "max_model_len": 4096}, max_running=1, max_in_flight=8)
    body = {**CHAT, "max_tokens": 2000}
    running = [asyncio.ensure_future(api.http.post("/v1/chat/completions", json=body)) for _ in range(3)]
    while api.serving.in_flight < 3:
        await asyncio.sleep(0.01)
    assert api.serving.queue.queued == 2
    assert await api.serving.drain(0.2) == 3
    answers = await asyncio.wait_for(asyncio.gather(*running), 10)
    assert [r.status_code for r in answers] == [503, 503, 503], [r.text for r in answers]
    assert all(r.json()["error"]["code"] == "server_shutting_down" for r in answers)
    assert api.serving.in_flight == 0 and api.serving.queue.running == 0 and api.serving.queue.queued == 0
    await api.aclose()
