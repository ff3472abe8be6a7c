"""Rate limits, backpressure and timeouts on the real engine (its own `serve run` with tight limits)."""

import asyncio
import json
import time

import httpx
import pytest

from loadtests import sse
from loadtests.servers import free_ports
from tests.e2e.conftest import dev_config, start_stack

DIRECT_PORT, PROXY_PORT = free_ports(2)
URL = f"http://127.0.0.1:{DIRECT_PORT}"
KEY_A, KEY_B = "sk-limits-test-key-a", "sk-limits-test-key-b"
MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    config = dev_config(DIRECT_PORT, PROXY_PORT, keys=True)
    args = config["applications"][0]["args"]
    # The timeout must outlast the set-up of the 3 streams and the 4th request by far: with 1.5 s, CI once
    # saw a stream time out (freeing its place) just before the 4th request, which then got 200.
    args["limits"] = {"requests_per_minute": 5, "request_timeout_s": 6}
    model = args["models"][0]
    model["deployment"]["max_ongoing_requests"] = 2
    model["deployment"]["max_queued_requests"] = 1  # 2 in the engine + 1 waiting in the fair queue
    model["deployment"]["autoscaling"]["target_ongoing_requests"] = 2
    log = tmp_path_factory.mktemp("serve") / "serve-limits.log"
    with start_stack(config, log, env={"SERVING_API_KEYS": f"{KEY_A},{KEY_B}"}) as server:
        yield server


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def body(max_tokens, stream=False, n=1):
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
        "n": n,
    }


async def test_full_queue_answers_503_at_once_and_timeouts_cancel(limited_server):
    """2 in the engine, 1 waiting in the replica's fair queue (serving/api/fair_queue.py), a 4th refused at once;
    the request time counts from arrival, so the waiting one times out too."""
    async with httpx.AsyncClient(timeout=30) as client:
        admitted = [asyncio.Event() for _ in range(3)]

        async def long_stream(i):
            events = []
            async with client.stream(
                "POST", f"{URL}/v1/chat/completions", json=body(1900, True, n=16), headers=auth(KEY_A)
            ) as r:
                if r.status_code != 200:
                    return r.status_code, json.loads(await r.aread())
                async for event in sse.aiter_events(r.aiter_bytes()):
                    events.append(event.json())
                    admitted[i].set()
            return r.status_code, events

        # 3 streams of 16 x 1900 tokens: ~90k tokens, over 10 s of generation here, so each outlasts
        # request_timeout_s (6 s); alone, one finishes in ~5.5 s.
        streams = [asyncio.create_task(long_stream(i)) for i in range(3)]
        # Two stream (a first chunk: their place in the engine is taken), the third waits for one
        done, _ = await asyncio.wait([asyncio.ensure_future(e.wait()) for e in admitted], timeout=5)
        assert len(done) == 2, f"{len(done)} streams started"
        for _ in range(50):
            stats = (await client.get(f"{URL}/stats", headers=auth(KEY_B))).json()[MODEL]
            if stats["in_flight"] == 3:
                break
            await asyncio.sleep(0.1)
        assert stats["in_flight"] == 3, stats
        start = time.perf_counter()
        r = await client.post(f"{URL}/v1/chat/completions", json=body(4), headers=auth(KEY_A))
        elapsed = time.perf_counter() - start
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
        assert elapsed < 0.1, f"503 took {elapsed * 1000:.0f} ms"
        # the long streams pass request_timeout_s: an error event, then [DONE]. The waiting one has the
        # same time from its arrival: a 504 if it never started, or, when a place freed just before its
        # time ran out, a stream that ends with the same error event.
        results = await asyncio.gather(*streams)
        for status, answer in results:
            if status == 200:
                assert answer[-1] == sse.DONE
                assert answer[-2]["error"]["code"] == "request_timeout", answer[-2]
            else:
                assert status == 504 and answer["error"]["code"] == "request_timeout", (status, answer)
        stats = (await client.get(f"{URL}/stats", headers=auth(KEY_B))).json()[MODEL]
        assert stats["unfinished_requests"] == 0 and stats["in_flight"] == 0


def test_requests_per_minute_per_key(limited_server):
    # 5 requests per minute per key (the /stats call does not count)
    for _ in range(5):
        assert (
            httpx.post(
                f"{URL}/v1/completions",
                json={"model": MODEL, "prompt": "hi", "max_tokens": 2},
                headers=auth(KEY_B),
                timeout=30,
            ).status_code
            == 200
        )
    r = httpx.post(
        f"{URL}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}, headers=auth(KEY_B), timeout=30
    )
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert KEY_B not in r.text
