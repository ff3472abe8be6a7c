"""A request's prompt-cache hits, reported as OpenAI does, from the engine contract's `EngineOutput.cached_tokens`.

Chat and completions: `usage.prompt_tokens_details.cached_tokens` (whole bodies and a stream's usage event),
left out when the engine does not state it; Responses: `usage.input_tokens_details.cached_tokens` (0 then:
OpenAI's schema requires it). Also the request's `generation` log line and its `GenerationDone` (the
`ray_serving_prompt_cached_tokens_total` counter). In-process, on the simulated engine (its prefix cache
gives exact figures) or a scripted one that states nothing; the forwarded path over real loopback HTTP
with the fixtures of tests/api/test_forwarding.py. The same on real vLLM: tests/e2e/test_cached_tokens.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from loadtests import sse
from serving.api import openai_serving
from serving.api.openai_serving import OpenAIServing
from serving.config import AuthConfig, LimitsConfig
from serving.engine.base import ChoiceDelta, Engine, EngineInfo, EngineOutput
from serving.engine.simulator import render_chat, tokenize
from serving.observability.metrics import METRIC_NAMES, GenerationDone, Metrics
from tests.api.test_forwarding import AUTH as FWD_AUTH
from tests.api.test_forwarding import connect, keys, replicas  # noqa: F401 (fixtures)
from tests.inprocess import MODEL, InProcessApp

BLOCK = 16
SYSTEM = " ".join(f"rule{i:03d} holds" for i in range(120))  # ~360 of the simulator's tokens
ENGINE = {"block_size": BLOCK, "max_model_len": 4096}


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def expected_hit(cached_prompt: str, prompt: str) -> int:
    """What the simulator's prefix cache finds of `prompt` after `cached_prompt` (a fresh cache): the whole
    blocks of their common prefix, never the block of the prompt's last token."""
    a, b = tokenize(cached_prompt), tokenize(prompt)
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return min(common // BLOCK, (len(b) - 1) // BLOCK) * BLOCK


class Recorded(Metrics):
    def __init__(self) -> None:
        self.done: list[GenerationDone] = []

    def generation_done(self, done: GenerationDone) -> None:
        self.done.append(done)


@pytest.fixture
def log_lines(monkeypatch) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    monkeypatch.setattr(openai_serving, "access_log", lambda event, **fields: lines.append({"event": event, **fields}))
    return lines


def test_the_counter_is_named_beside_the_prompt_tokens():
    assert METRIC_NAMES["prompt_cached_tokens"] == "ray_serving_prompt_cached_tokens_total"
    assert GenerationDone(MODEL, None, None, 1.0, None, 10, 1).cached_tokens is None  # not stated unless known


async def test_chat_states_the_prompt_s_cached_tokens_whole_and_streamed(make_app, log_lines):
    metrics = Recorded()
    app = await make_app(ENGINE, metrics=metrics)
    first = await app.client.chat.completions.create(model=MODEL, messages=messages("What now?"), max_tokens=3)
    second = await app.client.chat.completions.create(model=MODEL, messages=messages("And then?"), max_tokens=3)
    hit = expected_hit(render_chat(messages("What now?")), render_chat(messages("And then?")))
    assert hit >= 300 and hit % BLOCK == 0
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == hit
    stream = await app.client.chat.completions.create(
        model=MODEL,
        messages=messages("Why though?"),
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert all(c.usage is None for c in chunks[:-1]) and chunks[-1].choices == []
    streamed_hit = expected_hit(render_chat(messages("And then?")), render_chat(messages("Why though?")))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == streamed_hit >= 300
    # one log line and one observation per request, each with the request's count
    generations = [line for line in log_lines if line["event"] == "generation"]
    assert [line["cached_tokens"] for line in generations] == [0, hit, streamed_hit]
    assert [d.cached_tokens for d in metrics.done] == [0, hit, streamed_hit]
    assert [d.prompt_tokens for d in metrics.done] == [line["prompt_tokens"] for line in generations]


async def test_completions_state_the_prompt_s_cached_tokens_whole_and_streamed(make_app):
    app = await make_app(ENGINE)
    prompt = SYSTEM + " question one"
    first = await app.client.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
    second = await app.client.completions.create(model=MODEL, prompt=SYSTEM + " question two", max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    hit = expected_hit(prompt, SYSTEM + " question two")
    assert second.usage.prompt_tokens_details.cached_tokens == hit >= 300
    r = await app.http.post(
        "/v1/completions",
        json={"model": MODEL, "prompt": SYSTEM + " question 3", "max_tokens": 2, "stream": True,
              "stream_options": {"include_usage": True}},
    )  # fmt: skip
    usage = sse.parse(r.content)[-2]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": expected_hit(prompt, SYSTEM + " question 3")}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_with_the_cache_off_the_count_is_0_not_left_out(make_app):
    app = await make_app({**ENGINE, "prefix_cache_blocks": 0})
    for _ in range(2):
        r = await app.client.chat.completions.create(model=MODEL, messages=messages("Again?"), max_tokens=2)
        assert r.usage.prompt_tokens_details.cached_tokens == 0


async def test_responses_state_the_prompt_s_cached_tokens(make_app):
    app = await make_app(ENGINE)
    first = await app.client.responses.create(model=MODEL, instructions=SYSTEM, input="What now?", max_output_tokens=3)
    second = await app.client.responses.create(model=MODEL, instructions=SYSTEM, input="And then?", max_output_tokens=3)
    assert first.usage.input_tokens_details.cached_tokens == 0
    hit = expected_hit(render_chat(messages("What now?")), render_chat(messages("And then?")))
    assert second.usage.input_tokens_details.cached_tokens == hit >= 300
    stored = await app.client.responses.retrieve(second.id)
    assert stored.usage.input_tokens_details.cached_tokens == hit
    stream = await app.client.responses.create(
        model=MODEL, instructions=SYSTEM, input="Why though?", max_output_tokens=3, stream=True
    )
    ended = [e async for e in stream if e.type in ("response.completed", "response.incomplete")]
    streamed_hit = expected_hit(render_chat(messages("And then?")), render_chat(messages("Why though?")))
    assert len(ended) == 1 and ended[0].response.usage.input_tokens_details.cached_tokens == streamed_hit >= 300


class SilentEngine(Engine):
    """An engine that does not say what it found cached (`cached_tokens` left None)."""

    async def start(self):
        return EngineInfo(max_model_len=64)

    async def generate(self, request):
        yield EngineOutput(3, [ChoiceDelta(0, "He", 1)])
        yield EngineOutput(3, [ChoiceDelta(0, "llo", 1, "stop")])

    async def check_health(self):
        return None

    async def shutdown(self):
        return None


async def test_an_engine_that_does_not_say_gets_no_invented_count(log_lines):
    metrics = Recorded()
    app = InProcessApp([OpenAIServing(SilentEngine(), "silent", 64, metrics=metrics)], metrics=metrics)
    try:
        chat = {"model": "silent", "messages": [{"role": "user", "content": "hi"}]}
        whole = (await app.http.post("/v1/chat/completions", json=chat)).json()
        assert whole["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        r = await app.http.post(
            "/v1/chat/completions", json={**chat, "stream": True, "stream_options": {"include_usage": True}}
        )
        assert sse.parse(r.content)[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        text = (await app.http.post("/v1/completions", json={"model": "silent", "prompt": "hi"})).json()
        assert "prompt_tokens_details" not in text["usage"]
        # Responses: the field is required by OpenAI's schema, as a number
        response = await app.client.responses.create(model="silent", input="hi")
        assert response.usage.input_tokens_details.cached_tokens == 0
    finally:
        await app.aclose()
    generations = [line for line in log_lines if line["event"] == "generation"]
    assert len(generations) == 4 and all(line["cached_tokens"] is None for line in generations)
    assert len(metrics.done) == 4 and all(d.cached_tokens is None for d in metrics.done)


async def test_a_budgeted_stream_is_settled_from_a_usage_event_with_details(make_app, monkeypatch):
    """The entry point reads the usage event (serving/api/pipeline.py, `_settled_stream`) to settle the caller's
    tokens, and cuts it out when the client did not ask for it: the nested details change neither."""
    monkeypatch.setenv("CACHED_TOKENS_TEST_KEYS", "sk-cached-test-key-0001")
    app = await make_app(
        ENGINE, limits=LimitsConfig(tokens_per_minute=100_000), auth=AuthConfig(api_keys_env="CACHED_TOKENS_TEST_KEYS")
    )
    app.app.state.budgets.use_clock(lambda: 1000.0)  # no refill during the test
    auth = {"Authorization": "Bearer sk-cached-test-key-0001"}
    caller = app.app.state.authenticator.identify(auth["Authorization"])

    def left() -> float:
        return app.app.state.budgets.remaining(caller.owner.budget, "tokens")

    body = {"model": MODEL, "messages": messages("Hidden?"), "max_tokens": 5, "ignore_eos": True, "stream": True}
    await app.http.post("/v1/chat/completions", json={**body, "stream": False}, headers=auth)  # fills the cache
    before = left()
    hidden = await app.http.post("/v1/chat/completions", json=body, headers=auth)
    events = sse.parse(hidden.content)
    assert events[-1] == sse.DONE and all("usage" not in e for e in events[:-1]), events[-2]
    prompt = len(tokenize(render_chat(messages("Hidden?"))))
    assert before - left() == prompt + 5
    shown = await app.http.post(
        "/v1/chat/completions", json={**body, "stream_options": {"include_usage": True}}, headers=auth
    )
    usage = sse.parse(shown.content)[-2]["usage"]
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0
    assert before - left() == 2 * (prompt + 5)


async def test_a_forwarded_request_brings_the_serving_replica_s_count(replicas):  # noqa: F811
    a, b = await replicas("a", engine_args=ENGINE), await replicas("b", engine_args=ENGINE)
    connect([a, b], a="draining")  # a takes no new request: every one is served by b
    url = f"{a.url}/v1/chat/completions"
    body = {"model": MODEL, "messages": messages("Forwarded?"), "max_tokens": 4}
    async with httpx.AsyncClient(timeout=30) as http:
        first = (await http.post(url, json=body, headers=FWD_AUTH)).json()
        whole = (await http.post(url, json=body, headers=FWD_AUTH)).json()
        streamed = await http.post(
            url, json={**body, "stream": True, "stream_options": {"include_usage": True}}, headers=FWD_AUTH
        )
    hit = expected_hit(render_chat(messages("Forwarded?")), render_chat(messages("Forwarded?")))
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert whole["usage"]["prompt_tokens_details"] == {"cached_tokens": hit} and hit >= 300
    assert sse.parse(streamed.content)[-2]["usage"]["prompt_tokens_details"] == {"cached_tokens": hit}
    assert (await a.engine.stats())["requests"] == 0
