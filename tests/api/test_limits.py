"""Limits in-process: API keys, rate limits, body size, backpressure and timeouts.

The real FastAPI app and OpenAIServing on the simulated engine, driven through
httpx's ASGI transport (no server, no Ray). Every refusal must be OpenAI's error
body with the right status and, where the client should come back later, an
integer `Retry-After`.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from loadtests import sse
from serving.api.security import AuthSetupError
from serving.config import AuthConfig, LimitsConfig
from tests.inprocess import MODEL, InProcessApp

KEY_ENV = "SERVING_TEST_LIMITS_KEYS"
KEY, OTHER_KEY = "sk-limits-test-key-1", "sk-limits-test-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
KEYS = AuthConfig(api_keys_env=KEY_ENV)
# Slow enough that a request is certainly still running while the test looks at it.
SLOW = {"ttft_base_s": 0.0, "prefill_s_per_token": 0.0, "decode_s_per_token": 0.05, "max_model_len": 512}
LEN = {"max_model_len": 512}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv(KEY_ENV, f"{KEY}, {OTHER_KEY}")


def assert_error(r: httpx.Response, status: int, code: str | None = None, error_type: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code, err
    if error_type is not None:
        assert err["type"] == error_type, err
    return err


def retry_after(r: httpx.Response) -> int:
    value = r.headers["retry-after"]
    assert value.isdigit(), f"Retry-After must be an integer number of seconds, got {value!r}"
    assert int(value) >= 1
    return int(value)


# -- API keys --------------------------------------------------------------------------


async def test_keys_required_and_never_echoed(make_app):
    s = await make_app(LEN, auth=KEYS)
    for headers in (
        {},
        {"Authorization": "Bearer sk-wrong"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer"},
    ):
        r = await s.http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert_error(r, 401, code="invalid_api_key")
        assert "sk-wrong" not in r.text and KEY not in r.text
    # 401 comes before body parsing: a broken body without a key is still a 401
    r = await s.http.post("/v1/chat/completions", content=b"{broken", headers={"content-type": "application/json"})
    assert_error(r, 401, code="invalid_api_key")
    for key in (KEY, OTHER_KEY):  # surrounding whitespace in the env var is ignored
        r = await s.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
    assert (await s.http.get("/health")).status_code == 200  # liveness stays open


async def test_open_mode_only_when_the_config_says_so(monkeypatch, make_app):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(AuthSetupError, match=f"{KEY_ENV} .* is not set"):
        await make_app(LEN, auth=KEYS)  # keys expected, none found: no start (it used to serve open)
    s = await make_app(LEN, auth=AuthConfig.model_validate("open"))
    assert not s.app.state.authenticator.enabled
    for headers in ({}, {"Authorization": "Bearer anything"}, {"Authorization": "garbage"}):
        r = await s.http.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert r.status_code == 200, r.text
        assert (await s.http.get("/v1/models", headers=headers)).status_code == 200


async def test_keys_from_a_file(monkeypatch, tmp_path, make_app):
    monkeypatch.delenv(KEY_ENV, raising=False)
    keys = tmp_path / "keys"
    keys.write_text("# team a\nsk-from-file-key-0001\n\n  sk-second-key-00002  \n  # old: sk-retired-key-0003\n")
    s = await make_app(LEN, auth=AuthConfig(api_keys_env=None, api_keys_file=str(keys)))
    for key in ("sk-from-file-key-0001", "sk-second-key-00002"):
        r = await s.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
    assert_error(await s.http.post("/v1/chat/completions", json=CHAT), 401, code="invalid_api_key")
    for comment in ("# team a", "# old: sk-retired-key-0003", "sk-retired-key-0003"):  # comments are not keys
        r = await s.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {comment}"})
        assert_error(r, 401, code="invalid_api_key")


# -- rate limits -----------------------------------------------------------------------


async def test_requests_per_minute(make_app):
    s = await make_app(LEN, limits=LimitsConfig(requests_per_minute=3), auth=KEYS)
    for _ in range(3):
        r = await s.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert r.status_code == 200, r.text
    r = await s.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert_error(r, 429, code="rate_limit_exceeded", error_type="rate_limit_exceeded")
    # one request refills in 60/3 = 20 s
    assert 1 <= retry_after(r) <= 20
    # 429 comes before body parsing, and every /v1 generation route shares the budget
    r = await s.http.post("/v1/completions", content=b"{broken", headers={**AUTH, "content-type": "application/json"})
    assert_error(r, 429, code="rate_limit_exceeded")
    retry_after(r)
    # the budget is per key: the second key still has its own
    r = await s.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 200, r.text


async def test_requests_per_minute_refills(make_app):
    now = [1000.0]
    s = await make_app(LEN, limits=LimitsConfig(requests_per_minute=3), auth=KEYS)
    s.app.state.budgets.use_clock(lambda: now[0])
    for _ in range(3):
        assert (await s.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200
    r = await s.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 429
    now[0] += retry_after(r)
    assert (await s.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200


async def test_tokens_per_minute(make_app):
    # Reservations and settlement in detail: tests/api/test_token_budgets.py.
    s = await make_app(LEN, limits=LimitsConfig(tokens_per_minute=100), auth=KEYS)
    s.app.state.budgets.use_clock(lambda: 1000.0)  # no refill
    r = await s.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 60, "ignore_eos": True}, headers=AUTH)
    assert r.status_code == 200, r.text
    # 60 more do not fit what is left
    r = await s.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 60}, headers=AUTH)
    err = assert_error(r, 429, code="rate_limit_exceeded", error_type="rate_limit_exceeded")
    assert "tokens per minute" in err["message"]
    assert 1 <= retry_after(r) <= 60
    r = await s.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 200, r.text


# -- body size -------------------------------------------------------------------------


async def test_body_cap_follows_the_models_context(make_app):
    """Default `max_body_bytes` (null): 16 bytes a token of the longest context + 64 KiB, at least 1 MB.

    Regression: the fixed 1 MB cap refused a long-context model's prompts that it accepts.
    """
    long_ctx = await make_app({"max_model_len": 131_072}, auth=KEYS)  # cap 2,162,688 bytes
    # 1.5 MB: too long for the context, not too big
    body = {"model": MODEL, "prompt": "word " * 300_000, "max_tokens": 1}
    r = await long_ctx.http.post("/v1/completions", json=body, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    body["prompt"] = "word " * 500_000  # 2.5 MB
    r = await long_ctx.http.post("/v1/completions", json=body, headers=AUTH)
    assert_error(r, 413)
    assert "2162688 bytes" in r.json()["error"]["message"]

    short_ctx = await make_app(LEN, auth=KEYS)  # 512 tokens: the 1 MB floor
    body["prompt"] = "word " * 220_000  # 1.1 MB
    r = await short_ctx.http.post("/v1/completions", json=body, headers=AUTH)
    assert_error(r, 413)
    assert "1000000 bytes" in r.json()["error"]["message"]


async def test_body_over_the_limit_is_413(make_app):
    s = await make_app(LEN, limits=LimitsConfig(max_body_bytes=2048), auth=KEYS)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 3000}]}
    r = await s.http.post("/v1/chat/completions", json=big, headers=AUTH)
    assert_error(r, 413, error_type="invalid_request_error")

    # without Content-Length (chunked): counted while reading
    async def chunks():
        data = json.dumps(big).encode()
        for i in range(0, len(data), 500):
            yield data[i : i + 500]

    r = await s.http.post("/v1/completions", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413)
    # a lying Content-Length does not help either: the bytes read are counted
    r = await s.http.post(
        "/v1/chat/completions",
        content=chunks(),
        headers={**AUTH, "content-type": "application/json", "content-length": "10"},
    )
    assert_error(r, 413)
    # just under the limit is fine
    ok = {**CHAT, "messages": [{"role": "user", "content": "x" * 1500}]}
    assert len(json.dumps(ok)) < 2048
    assert (await s.http.post("/v1/chat/completions", json=ok, headers=AUTH)).status_code == 200


# -- backpressure ----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_backpressure_is_503_at_once(stream, make_app):
    s = await make_app(SLOW, max_in_flight=2, auth=KEYS)
    slow = {**CHAT, "max_tokens": 40, "ignore_eos": True}  # ~2 s each
    holders = [asyncio.create_task(s.http.post("/v1/chat/completions", json=slow, headers=AUTH)) for _ in range(2)]
    deadline = time.monotonic() + 5
    while s.serving.in_flight < 2:
        assert time.monotonic() < deadline, "the two slow requests never got in flight"
        await asyncio.sleep(0.005)
    try:
        third = {**CHAT, "stream": True} if stream else CHAT
        t0 = time.perf_counter()
        r = await s.http.post("/v1/chat/completions", json=third, headers=AUTH)
        elapsed = time.perf_counter() - t0
        assert_error(r, 503, error_type="service_unavailable")
        retry_after(r)
        assert elapsed < 0.1, f"the refusal took {elapsed * 1000:.0f} ms"
        assert s.serving.in_flight == 2  # the refused request left no trace
    finally:
        for t in holders:
            t.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    # once capacity frees up, requests are served again
    deadline = time.monotonic() + 5
    while s.serving.in_flight or await s.running():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert (await s.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200


# -- timeouts --------------------------------------------------------------------------


async def wait_idle(s: InProcessApp, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while await s.running() or s.serving.in_flight:
        assert time.monotonic() < deadline, f"engine still running {await s.running()} requests"
        await asyncio.sleep(0.01)


async def test_non_stream_timeout_is_504_and_frees_the_engine(make_app):
    s = await make_app(SLOW, limits=LimitsConfig(request_timeout_s=0.3), auth=KEYS)
    t0 = time.perf_counter()
    r = await s.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 100, "ignore_eos": True}, headers=AUTH)
    elapsed = time.perf_counter() - t0
    assert_error(r, 504, code="request_timeout", error_type="timeout")
    assert 0.25 <= elapsed < 1.5, elapsed
    await wait_idle(s)
    stats = await s.engine.stats()
    assert stats["running"] == 0 and stats["requests_cancelled"] == 1
    assert (await s.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200


async def test_stream_timeout_after_start_is_an_error_event_then_done(make_app):
    s = await make_app(SLOW, limits=LimitsConfig(request_timeout_s=0.3), auth=KEYS)
    payload = {**CHAT, "max_tokens": 100, "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    r = await s.http.post("/v1/chat/completions", json=payload, headers=AUTH)
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert elapsed < 1.5, elapsed
    events = sse.parse(r.text)
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["code"] == "request_timeout" and error["error"]["type"] == "timeout"
    chunks = events[:-2]
    assert 1 <= len(chunks) < 100 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    await wait_idle(s)
    assert (await s.engine.stats())["requests_cancelled"] == 1


async def test_stream_timeout_before_first_token_is_504(make_app):
    s = await make_app({**SLOW, "ttft_base_s": 2.0}, limits=LimitsConfig(request_timeout_s=0.3), auth=KEYS)
    r = await s.http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 5, "stream": True}, headers=AUTH
    )
    assert_error(r, 504, code="request_timeout")
    await wait_idle(s)
