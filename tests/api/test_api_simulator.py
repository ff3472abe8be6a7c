"""The OpenAI API in-process: the real FastAPI app and OpenAIServing on the simulated engine.

The official `openai` SDK talks to the app through httpx's ASGI transport (no
server, no Ray); a raw ASGI driver covers what that transport cannot show
(it buffers whole responses): a client disconnecting mid-stream.
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from loadtests import sse
from serving.engine.simulator import render_chat, tokenize
from tests.inprocess import MODEL

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
async def server(make_app):
    return await make_app({"max_model_len": 256})


def chat_prompt_tokens(messages) -> int:
    return len(tokenize(render_chat(messages)))


# -- models and health ------------------------------------------------------------


async def test_models_and_readiness(server):
    models = await server.client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert (await server.client.models.retrieve(MODEL)).id == MODEL
    with pytest.raises(openai.NotFoundError):
        await server.client.models.retrieve("nope")
    r = await server.http.get("/ready")
    assert r.status_code == 200 and r.json()["models"] == {MODEL: True}


# -- chat -----------------------------------------------------------------------------


async def test_chat_non_stream_usage(server):
    r = await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, seed=1)
    assert r.object == "chat.completion" and r.model == MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.prompt_tokens == chat_prompt_tokens(MESSAGES)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


async def test_chat_stream_with_usage_matches_non_stream(server):
    full = await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, seed=5)
    stream = await server.client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, seed=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in content)
    assert "".join(c.choices[0].delta.content or "" for c in content) == full.choices[0].message.content
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 16
    assert usage.prompt_tokens == full.usage.prompt_tokens


async def test_chat_stream_without_usage_ends_with_done(server):
    r = await server.http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "stream": True}
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse.parse(r.text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]][-1] == "length"


async def test_chat_n_choices(server):
    r = await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, n=3, seed=2)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 3
    assert r.usage.completion_tokens == 15
    stream = await server.client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, n=3, seed=2, stream=True
    )
    texts = {0: "", 1: "", 2: ""}
    finished = set()
    async for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert finished == {0, 1, 2}
    assert [texts[i] for i in range(3)] == [c.message.content for c in r.choices]


async def test_chat_stop_sequence(server):
    free = (await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, seed=9)).choices[
        0
    ]
    text = free.message.content
    stop = text[len(text) // 2 : len(text) // 2 + 4]
    r = await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=40, seed=9, stop=stop)
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == text[: text.index(stop)]
    stream = await server.client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=40, seed=9, stop=[stop], stream=True
    )
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert streamed == r.choices[0].message.content


async def test_chat_seed_determinism(server):
    a = await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, seed=42)
    b = await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, seed=42)
    c = await server.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, seed=43)
    assert a.choices[0].message.content == b.choices[0].message.content != c.choices[0].message.content


async def test_chat_logprobs(server):
    r = await server.client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, logprobs=True, top_logprobs=2
    )
    items = r.choices[0].logprobs.content
    assert len(items) == 4 and all(len(i.top_logprobs) == 2 for i in items)
    assert "".join(i.token for i in items) == r.choices[0].message.content


# -- completions -----------------------------------------------------------------------


async def test_completions_non_stream_and_stream(server):
    r = await server.client.completions.create(model=MODEL, prompt="one two six ten", max_tokens=7, seed=3)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 7
    stream = await server.client.completions.create(
        model=MODEL,
        prompt="one two six ten",
        max_tokens=7,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].usage.total_tokens == 11


async def test_completions_token_ids_and_n(server):
    r = await server.client.completions.create(model=MODEL, prompt=[5, 6, 7], max_tokens=2, n=2)
    assert r.usage.prompt_tokens == 3 and r.usage.completion_tokens == 4
    assert [c.index for c in r.choices] == [0, 1]


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_prompt_too_long_is_400(server, stream):
    long = " ".join(["word"] * 300)
    with pytest.raises(openai.BadRequestError) as exc:
        await server.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=5, stream=stream
        )
    assert exc.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        await server.client.completions.create(model=MODEL, prompt="word " * 200, max_tokens=100, stream=stream)
    r = await server.http.post("/v1/completions", json={"model": MODEL, "prompt": long, "max_tokens": 5})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "maximum context length is 256" in err["message"]
    assert (await server.stats())["running"] == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_engine_failure_before_output_is_500(stream, make_app):
    s = await make_app({"error_rate": 1.0, "error_after_tokens": 0})
    with pytest.raises(openai.InternalServerError):
        await s.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=stream)
    r = await s.http.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "stream": stream})
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert (await s.stats())["running"] == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_dead_engine_is_503(stream, make_app):
    s = await make_app({"fail_after_s": 0.0})
    with pytest.raises(openai.APIStatusError) as exc:
        await s.client.completions.create(model=MODEL, prompt="hi", max_tokens=5, stream=stream)
    assert exc.value.status_code == 503
    body = (await s.http.post("/v1/completions", json={"model": MODEL, "prompt": "hi"})).json()
    assert body["error"]["type"] == "service_unavailable"
    ready = await s.http.get("/ready")
    assert ready.status_code == 503 and ready.json()["models"] == {MODEL: False}


async def test_failure_mid_stream_is_an_error_event(make_app):
    s = await make_app({"error_rate": 1.0, "error_after_tokens": 3})
    r = await s.http.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 10, "stream": True}
    )
    assert r.status_code == 200
    events = sse.parse(r.text)
    assert events[-1] == "[DONE]"
    assert [e["choices"][0]["delta"]["content"] != "" for e in events[:3]] == [True] * 3
    assert events[-2]["error"]["type"] == "server_error"
    # The SDK turns the error event into an exception after the first tokens.
    stream = await s.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10, stream=True)
    got = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            got.append(chunk)
    assert len(got) == 3
    # A non-streamed request has nothing sent yet: a plain 500.
    with pytest.raises(openai.InternalServerError):
        await s.client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    assert (await s.stats())["running"] == 0


@pytest.mark.parametrize(
    "path,extra",
    [
        ("/v1/chat/completions", {"messages": MESSAGES}),
        ("/v1/completions", {"prompt": "hi"}),
    ],
)
async def test_engine_dying_mid_stream_is_an_error_event(path, extra, make_app):
    s = await make_app({"fail_after_s": 0.3, "decode_s_per_token": 0.02})
    r = await s.http.post(path, json={"model": MODEL, "max_tokens": 200, "stream": True, **extra})
    events = sse.parse(r.text)
    assert r.status_code == 200 and events[-1] == "[DONE]"
    assert events[-2]["error"]["type"] == "service_unavailable"


# -- cancellation -------------------------------------------------------------------------


async def asgi_stream_then_disconnect(app, path: str, payload: dict, after_chunks: int) -> list[bytes]:
    """Drive the ASGI app like a server whose client goes away after `after_chunks` body chunks."""
    body = json.dumps(payload).encode()
    received: list[bytes] = []
    disconnected = asyncio.Event()
    sent_request = False

    async def receive():
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body" and message.get("body"):
            received.append(message["body"])
            if len(received) >= after_chunks:
                disconnected.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    return received


@pytest.mark.parametrize(
    "path,extra",
    [
        ("/v1/chat/completions", {"messages": MESSAGES}),
        ("/v1/completions", {"prompt": "hello"}),
    ],
)
async def test_client_disconnect_cancels_the_engine_request(path, extra, make_app):
    s = await make_app({"decode_s_per_token": 0.02})
    payload = {"model": MODEL, "max_tokens": 1000, "stream": True, **extra}
    task = asyncio.create_task(asgi_stream_then_disconnect(s.app, path, payload, after_chunks=3))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if (await s.stats())["running"] == 1:
            break
    assert (await s.stats())["running"] == 1
    chunks = await task
    assert 3 <= len(chunks) < 50
    stats = await s.stats()
    assert stats["running"] == 0 and stats["requests_cancelled"] == 1


async def test_concurrent_streams_are_counted_then_freed(make_app):
    s = await make_app({"decode_s_per_token": 0.01})

    async def one(i):
        r = await s.client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=20)
        return r.usage.completion_tokens

    tasks = [asyncio.create_task(one(i)) for i in range(8)]
    await asyncio.sleep(0.05)
    assert (await s.stats())["running"] == 8
    assert await asyncio.gather(*tasks) == [20] * 8
    assert (await s.stats())["running"] == 0
