"""SSE framing and non-stream collection through OpenAIServing, with a scripted engine."""

from __future__ import annotations

import re
from typing import Any

import pytest

from loadtests import sse
from serving.api.openai_serving import OpenAIServing
from serving.engine.base import ChoiceDelta, Engine, EngineInfo, EngineOutput, TokenLogprob
from tests.inprocess import InProcessApp

USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

# -- SSE framing through OpenAIServing with a scripted engine -------------------------------------


class ScriptedEngine(Engine):
    """Two choices, two steps; records the requests it receives."""

    def __init__(self) -> None:
        self.requests = []

    async def start(self):
        return EngineInfo(max_model_len=64)

    async def generate(self, request):
        self.requests.append(request)
        lp = [TokenLogprob("a", -0.5, [("a", -0.5), ("b", -1.0)])]
        yield EngineOutput(3, [ChoiceDelta(0, "He", 1, None, lp), ChoiceDelta(1, "Yo", 1, None, lp)])
        yield EngineOutput(3, [ChoiceDelta(0, "llo", 1, "stop", lp), ChoiceDelta(1, "!", 1, "length", lp)])

    async def check_health(self):
        return None

    async def shutdown(self):
        return None


@pytest.fixture()
def scripted():
    engine = ScriptedEngine()
    with InProcessApp([OpenAIServing(engine, "tiny", 64)]).test_client() as c:
        yield engine, c


def sse_events(text: str) -> list[Any]:
    """The payloads before [DONE]; our framing exactly: one `data: ` line per event, nothing else."""
    assert re.fullmatch(r"(data: [^\n]+\n\n)+", text), text[:300]
    return sse.parse(text)[:-1]


def test_chat_stream_framing(scripted):
    engine, c = scripted
    body = {
        "model": "tiny",
        "messages": USER,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 1,
        "max_completion_tokens": 5,
        "max_tokens": 2,
    }
    resp = c.post(CHAT, json=body)
    assert resp.status_code == 200
    events = sse_events(resp.text)
    chunks, usage = events[:-1], events[-1]
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "tiny" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert all(e["usage"] is None for e in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "He"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "llo"}
    assert [c_["finish_reason"] for c_ in chunks[1]["choices"]] == ["stop", "length"]
    assert chunks[0]["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"] == "b"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    params = engine.requests[-1].params
    assert params.max_tokens == 5 and params.n == 2 and params.logprobs == 1
    assert engine.requests[-1].messages == [{"role": "user", "content": "hi"}]


def test_vllm_s_continuous_usage_stats_is_accepted_and_usage_comes_once_at_the_end(scripted):
    """GuideLLM sends `stream_options.continuous_usage_stats` (vLLM's) on every stream: it was a 400
    (unrecognized argument), so GuideLLM could not stream against us. Usage still comes once, last."""
    _, c = scripted
    for path, body in (
        (CHAT, {"model": "tiny", "messages": USER, "max_tokens": 2}),
        (COMPLETIONS, {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
    ):
        options = {"include_usage": True, "continuous_usage_stats": True}
        resp = c.post(path, json={**body, "stream": True, "stream_options": options})
        assert resp.status_code == 200, resp.text
        events = sse_events(resp.text)
        assert all(e["usage"] is None for e in events[:-1])
        assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


def test_completion_stream_without_usage(scripted):
    _, c = scripted
    resp = c.post(COMPLETIONS, json={"model": "tiny", "prompt": "hi", "n": 2, "stream": True})
    events = sse_events(resp.text)
    assert len(events) == 2
    assert all("usage" not in e for e in events)
    assert [ch["text"] for ch in events[0]["choices"]] == ["He", "Yo"]
    assert all(ch["logprobs"] is None for e in events for ch in e["choices"])


def test_chat_non_stream_collects(scripted):
    _, c = scripted
    resp = c.post(CHAT, json={"model": "tiny", "messages": USER, "n": 2})
    body = resp.json()
    assert [ch["message"]["content"] for ch in body["choices"]] == ["Hello", "Yo!"]
    assert [ch["finish_reason"] for ch in body["choices"]] == ["stop", "length"]
    assert body["usage"]["completion_tokens"] == 4
