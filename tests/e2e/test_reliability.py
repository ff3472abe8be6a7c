"""Reliability and security against the real engine: keys, request ids, disconnects."""

import asyncio
import contextlib
import time

import httpx
import openai
import pytest

from tests.e2e.conftest import API_KEY, AUTH, DIRECT_URL, OTHER_KEY, PROXY_URL

MODEL = "tiny-llama"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.mark.parametrize("url", [DIRECT_URL, PROXY_URL])
def test_api_keys_required_on_v1_routes(dev_server, url):
    for path, method, body in [
        ("/v1/models", "GET", None),
        ("/v1/chat/completions", "POST", CHAT),
        ("/v1/completions", "POST", {"model": MODEL, "prompt": "x"}),
    ]:
        for headers in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": f"Basic {API_KEY}"}):
            r = httpx.request(method, url + path, json=body, headers=headers, timeout=10)
            assert r.status_code == 401, (path, headers, r.text)
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["code"] == "invalid_api_key"
            assert "sk-wrong" not in r.text and API_KEY not in r.text
    # liveness and readiness stay open
    assert httpx.get(url + "/health", timeout=10).status_code == 200
    # both configured keys work
    for key in (API_KEY, OTHER_KEY):
        assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code == 200


def test_sdk_without_key_gets_authentication_error(dev_server):
    bad = openai.OpenAI(base_url=f"{DIRECT_URL}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_request_id_is_returned_and_used(dev_server):
    r = httpx.post(
        f"{DIRECT_URL}/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Request-Id": "trace-abc.123"}, timeout=30
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "trace-abc.123"
    assert r.json()["id"].startswith("chatcmpl-trace-abc.123-")
    # an invalid id is replaced by a generated one
    r = httpx.post(
        f"{DIRECT_URL}/v1/chat/completions",
        json=CHAT,
        headers={**AUTH, "X-Request-Id": "bad id with spaces"},
        timeout=30,
    )
    assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32
    # errors carry it too
    r = httpx.post(
        f"{DIRECT_URL}/v1/chat/completions",
        json={**CHAT, "model": "nope"},
        headers={**AUTH, "X-Request-Id": "err-1"},
        timeout=30,
    )
    assert r.status_code == 404 and r.headers["x-request-id"] == "err-1"


def engine_stats() -> dict:
    return httpx.get(f"{DIRECT_URL}/stats", headers=AUTH, timeout=10).json()[MODEL]


async def engine_idle_within(seconds: float, after: str) -> None:
    """The engine has no request left (unfinished or in flight) within `seconds`, or the test fails."""
    since = time.monotonic()
    while True:
        stats = engine_stats()
        if stats["unfinished_requests"] == 0 and stats["in_flight"] == 0:
            return
        assert time.monotonic() - since < seconds, f"engine still has requests {seconds:g} s after {after}: {stats}"
        await asyncio.sleep(0.05)


async def test_client_disconnects_abort_engine_requests(dev_server):
    """20 streaming clients drop mid-stream: the engine's request count is back to 0 within 2 s."""
    body = {**CHAT, "max_tokens": 1500, "ignore_eos": True, "stream": True}

    async def drop_after_some_chunks(client: httpx.AsyncClient) -> int:
        chunks = 0
        async with client.stream("POST", f"{DIRECT_URL}/v1/chat/completions", json=body, headers=AUTH) as r:
            assert r.status_code == 200
            async for _ in r.aiter_raw():
                chunks += 1
                if chunks >= 3:
                    break  # leaving the block closes the connection mid-stream
        return chunks

    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        results = await asyncio.gather(*(drop_after_some_chunks(client) for _ in range(20)))
    assert all(c >= 3 for c in results)
    await engine_idle_within(2.0, "the disconnects")
    # 1500-token requests would still be running had they not been aborted
    assert engine_stats()["running"] == 0


async def test_non_streaming_clients_that_leave_abort_their_engine_requests(dev_server):
    """10 non-streaming clients give up after 0.5 s: their requests leave the engine within 1 s.

    Before the disconnect watcher every one generated all 1500 tokens for nobody.
    """
    body = {**CHAT, "max_tokens": 1500, "ignore_eos": True}
    async with httpx.AsyncClient(timeout=0.5, limits=httpx.Limits(max_connections=20)) as client:

        async def give_up() -> None:
            with contextlib.suppress(httpx.TimeoutException):  # the client closes the connection
                await client.post(f"{DIRECT_URL}/v1/chat/completions", json=body, headers=AUTH)

        await asyncio.gather(*(give_up() for _ in range(10)))
    await engine_idle_within(1.0, "the clients left")
