"""Honest token budgets and per-key concurrency, in-process (the real app over the simulated engine).

A request reserves its worst case when it is admitted (prompt + n x max_tokens,
an omitted max_tokens counting as the rest of the context) and is settled
against its usage when it ends. Before, a request was charged an estimate
after the fact (an omitted max_tokens counted 256): a key without max_tokens
got 8x its budget, one big request with a full bucket 122x, and 30 concurrent
requests were all admitted (15x). The clock is frozen in these tests, so the
buckets do not refill while they run.
"""

from __future__ import annotations

import asyncio

import pytest

from loadtests import sse
from serving.config import AuthConfig, LimitsConfig
from tests.inprocess import MODEL

KEY_ENV = "SERVING_TEST_BUDGET_KEYS"
KEY, OTHER_KEY = "sk-budget-test-key-1", "sk-budget-test-key-2"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
KEYS = AuthConfig(api_keys_env=KEY_ENV)
CONTEXT = 512
FAST = {"max_model_len": CONTEXT}
SLOW = {"ttft_base_s": 0.0, "prefill_s_per_token": 0.0, "decode_s_per_token": 0.05, "max_model_len": CONTEXT}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def api_keys(monkeypatch):
    monkeypatch.setenv(KEY_ENV, f"{KEY}, {OTHER_KEY}")


async def budgeted(make_app, engine_args: dict, **limits):
    app = await make_app(engine_args, limits=LimitsConfig(**limits), auth=KEYS)
    app.app.state.budgets.use_clock(lambda: 1000.0)  # no refill during the test
    return app


def bucket(app, key: str = KEY) -> float:
    """Tokens left in the key's tokens-per-minute bucket."""
    caller = app.app.state.authenticator.identify(f"Bearer {key}")
    return app.app.state.budgets.remaining(caller.owner.budget, "tokens")


async def test_a_request_that_cannot_fit_the_budget_is_400_and_says_why(make_app):
    app = await budgeted(make_app, FAST, tokens_per_minute=300)
    # max_tokens omitted: it may generate the rest of the 512-token context, more than 300
    r = await app.http.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "request_too_large" and err["param"] == "max_tokens", err
    assert "300 tokens per minute" in err["message"] and "max_tokens" in err["message"], err
    # n multiplies it: 2 x 200 > 300
    r = await app.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200, "n": 2}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "request_too_large", r.text
    # what fits is served, and the refusals cost nothing
    r = await app.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 200}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert bucket(app) == 300 - r.json()["usage"]["total_tokens"]


async def test_omitted_max_tokens_reserves_the_rest_of_the_context(make_app):
    app = await budgeted(make_app, SLOW, tokens_per_minute=1000)
    body = {**CHAT, "ignore_eos": True}  # no max_tokens: reserves ~511 of the 1000
    first = asyncio.create_task(app.http.post("/v1/chat/completions", json=body, headers=AUTH))
    while app.serving.in_flight == 0:
        await asyncio.sleep(0.005)
    assert bucket(app) < 1000 - 500
    # a second such request does not fit beside the first: 429 with the reason and when to retry
    r = await app.http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 429, r.text
    assert "reserves" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 1
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_reservation_is_settled_against_usage(make_app):
    app = await budgeted(make_app, FAST, tokens_per_minute=1000)
    r = await app.http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 300, "ignore_eos": True}, headers=AUTH)
    assert r.status_code == 200, r.text
    used = r.json()["usage"]["total_tokens"]
    assert bucket(app) == 1000 - used
    # a stream without include_usage: settled from the usage event the client does not see
    body = {**CHAT, "max_tokens": 20, "ignore_eos": True, "stream": True}
    r = await app.http.post("/v1/chat/completions", json=body, headers=AUTH)
    events = sse.parse(r.content)[:-1]
    assert events and all("usage" not in e for e in events), events[-1]
    prompt = (await app.client.chat.completions.create(**{**CHAT, "max_tokens": 1}, extra_headers=OTHER)).usage
    assert bucket(app) == 1000 - used - (prompt.prompt_tokens + 20)
    # with include_usage the client gets it, and the settlement is the same
    body["stream_options"] = {"include_usage": True}
    r = await app.http.post("/v1/chat/completions", json=body, headers=AUTH)
    usage = sse.parse(r.content)[-2]["usage"]
    assert usage["completion_tokens"] == 20
    assert bucket(app) == 1000 - used - 2 * (prompt.prompt_tokens + 20)


async def test_concurrent_requests_cannot_overdraw_the_budget(make_app):
    app = await budgeted(make_app, SLOW, tokens_per_minute=100)
    body = {**CHAT, "max_tokens": 10, "ignore_eos": True}  # reserves 10 + the prompt's ~0-1 tokens
    replies = await asyncio.gather(*(app.http.post("/v1/chat/completions", json=body, headers=AUTH) for _ in range(30)))
    served = [r for r in replies if r.status_code == 200]
    generated = sum(r.json()["usage"]["completion_tokens"] for r in served)
    used = sum(r.json()["usage"]["total_tokens"] for r in served)
    assert 1 <= len(served) <= 10, [r.status_code for r in replies]
    # what may be generated is reserved exactly; prompts are estimated, then settled
    assert generated <= 100, f"{len(served)} requests generated {generated} tokens on a 100-token budget"
    assert all(r.status_code == 429 for r in replies if r.status_code != 200)
    assert bucket(app) == 100 - used  # settled: an underestimated prompt is owed, and waited for
    r = await app.http.post("/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 429, r.text


async def test_per_key_concurrency_cap(make_app):
    app = await make_app(SLOW, limits=LimitsConfig(max_concurrent_requests_per_key=2), auth=KEYS)
    slow = {**CHAT, "max_tokens": 20, "ignore_eos": True}  # ~1 s each
    holders = [
        asyncio.create_task(app.http.post("/v1/chat/completions", json={**slow, "stream": s}, headers=AUTH))
        for s in (False, True)
    ]
    while app.serving.in_flight < 2:
        await asyncio.sleep(0.005)
    r = await app.http.post("/v1/chat/completions", json=slow, headers=AUTH)
    assert r.status_code == 429, r.text
    assert "concurrent" in r.json()["error"]["message"] and r.headers["retry-after"] == "1"
    # another key is not affected by this one's cap
    r = await app.http.post("/v1/chat/completions", json={**slow, "max_tokens": 1}, headers=OTHER)
    assert r.status_code == 200, r.text
    assert [h.status_code for h in await asyncio.gather(*holders)] == [200, 200]
    # both slots are back (the stream's when it ended): two more fit
    again = await asyncio.gather(
        *(app.http.post("/v1/chat/completions", json={**slow, "max_tokens": 1}, headers=AUTH) for _ in range(2))
    )
    assert [r.status_code for r in again] == [200, 200]
    assert app.app.state.budgets.in_progress(app.app.state.authenticator.identify(f"Bearer {KEY}").owner.budget) == 0


def test_the_cluster_configs_set_budgets():
    """Cluster configs ship with a per-key concurrency cap and token budget (dev.yaml may go without)."""
    import yaml

    from loadtests.servers import ROOT

    for name in ("cluster.yaml", "gpu.yaml"):
        data = yaml.safe_load((ROOT / "configs" / name).read_text())
        limits = next(a for a in data["applications"] if "args" in a)["args"].get("limits", {})
        assert limits.get("max_concurrent_requests_per_key"), (name, limits)
        assert limits.get("tokens_per_minute"), (name, limits)
