"""POST /v1/embeddings in-process, on the simulated engine, with the official openai SDK.

The real engine's vectors: tests/e2e/test_embeddings_engine.py (the engine) and
tests/e2e/test_embeddings.py (the whole stack).
"""

from __future__ import annotations

import base64
import struct

import pytest

from serving.api.openai_serving import OpenAIServing
from serving.config import LimitsConfig
from serving.engine.simulator import SimulatedEngine, SimulatorConfig
from tests.inprocess import FAST, MODEL, InProcessApp, simulated_engine

EMBED = "sim-embed"


@pytest.fixture
async def server():
    chat_engine = simulated_engine()
    chat_info = await chat_engine.start()
    embed_engine = SimulatedEngine(SimulatorConfig(max_model_len=64, embedding_size=32, **FAST), task="embed")
    embed_info = await embed_engine.start()
    backends = [
        OpenAIServing(chat_engine, MODEL, chat_info.max_model_len),
        OpenAIServing(embed_engine, EMBED, embed_info.max_model_len),
    ]
    limits = LimitsConfig(max_embedding_tokens=300)
    for b in backends:
        b.limits = limits
    app = InProcessApp(backends, limits=limits, tasks={MODEL: "generate", EMBED: "embed"})
    yield app
    await app.aclose()


async def test_strings_token_ids_and_their_lists_each_get_a_vector(server):
    one = await server.client.embeddings.create(model=EMBED, input="the cat sat")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 32 and one.data[0].index == 0
    assert one.model == EMBED and one.usage.prompt_tokens == one.usage.total_tokens == 3
    many = await server.client.embeddings.create(model=EMBED, input=["a dog", "the cat sat", "x"])
    assert [d.index for d in many.data] == [0, 1, 2]
    assert many.data[1].embedding == pytest.approx(one.data[0].embedding)
    ids = await server.client.embeddings.create(model=EMBED, input=[5, 6, 7])
    assert len(ids.data) == 1 and ids.usage.prompt_tokens == 3
    lists = await server.client.embeddings.create(model=EMBED, input=[[5, 6, 7], [8]])
    assert len(lists.data) == 2 and lists.data[0].embedding == pytest.approx(ids.data[0].embedding)


async def test_base64_is_little_endian_float32_and_dimensions_shorten(server):
    floats = (await server.http.post("/v1/embeddings", json={"model": EMBED, "input": "hello"})).json()
    packed = (
        await server.http.post("/v1/embeddings", json={"model": EMBED, "input": "hello", "encoding_format": "base64"})
    ).json()
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)
    # The SDK asks for base64 by default and decodes it itself.
    sdk = await server.client.embeddings.create(model=EMBED, input="hello", dimensions=8)
    assert len(sdk.data[0].embedding) == 8


async def test_models_say_which_model_embeds(server):
    cards = {m.id: m for m in (await server.client.models.list()).data}
    assert cards[EMBED].task == "embed" and cards[MODEL].task == "generate"  # type: ignore[attr-defined]


BAD = [
    ({"model": EMBED, "input": []}, 400, "input", None),
    ({"model": EMBED, "input": ""}, 400, "input", None),
    ({"model": EMBED, "input": [[]]}, 400, "input", None),
    ({"model": EMBED, "input": ["ok", ""]}, 400, "input", None),
    ({"model": EMBED, "input": ["word " * 40] * 9}, 400, "input", "request_too_large"),  # 360 tokens > 300
    ({"model": EMBED, "input": "x" * 4 * 65}, 400, "input", "context_length_exceeded"),
    ({"model": EMBED, "input": ["ok", "x" * 4 * 65]}, 400, "input", "context_length_exceeded"),
    ({"model": EMBED, "input": "x", "dimensions": 0}, 400, "dimensions", None),
    ({"model": EMBED, "input": "x", "dimensions": 33}, 400, "dimensions", None),
    ({"model": EMBED, "input": "x", "encoding_format": "int8"}, 400, "encoding_format", None),
    ({"model": EMBED, "input": "x", "extra": 1}, 400, "extra", None),
    ({"model": EMBED, "input": [-1]}, 400, "input", None),
    ({"model": EMBED, "input": ["x"] * 2049}, 400, "input", None),
    ({"model": EMBED}, 400, "input", None),
    ({"model": "nope", "input": "x"}, 404, "model", "model_not_found"),
    ({"model": MODEL, "input": "x"}, 400, "model", "model_not_embedding"),
]


@pytest.mark.parametrize("body,status,param,code", BAD)
async def test_bad_requests_are_openai_errors_and_the_server_goes_on(server, body, status, param, code):
    r = await server.http.post("/v1/embeddings", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    assert (await server.client.embeddings.create(model=EMBED, input="still fine")).data


async def test_a_chat_request_to_an_embedding_model_is_a_400(server):
    r = await server.http.post(
        "/v1/chat/completions", json={"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_generative", r.text


async def test_a_token_budget_reserves_the_inputs_and_names_input_when_they_cannot_fit():
    embed_engine = SimulatedEngine(SimulatorConfig(max_model_len=64, embedding_size=8, **FAST), task="embed")
    await embed_engine.start()
    limits = LimitsConfig(tokens_per_minute=50)
    app = InProcessApp([OpenAIServing(embed_engine, EMBED, 64, limits=limits)], limits=limits, tasks={EMBED: "embed"})
    try:
        ok = await app.client.embeddings.create(model=EMBED, input="a b c")  # 3 tokens, settled from usage
        assert ok.usage.total_tokens == 3
        r = await app.http.post("/v1/embeddings", json={"model": EMBED, "input": ["word " * 60] * 2})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert (err["param"], err["code"]) == ("input", "request_too_large") and "max_tokens" not in err["message"]
    finally:
        await app.aclose()


async def test_embeddings_feed_the_latency_and_token_metrics():
    class Recording:
        def __init__(self) -> None:
            self.done: list = []

        def generation_done(self, done) -> None:
            self.done.append(done)

        def request_done(self, *args, **kwargs) -> None:
            pass

        def engine_stats(self, *args) -> None:
            pass

    metrics = Recording()
    engine = SimulatedEngine(SimulatorConfig(max_model_len=64, embedding_size=32, **FAST), task="embed")
    info = await engine.start()
    app = InProcessApp([OpenAIServing(engine, EMBED, info.max_model_len, metrics=metrics)], metrics=metrics)  # type: ignore[arg-type]
    try:
        r = await app.client.embeddings.create(model=EMBED, input=["the cat sat", "a dog"])
        assert len(metrics.done) == 1
        done = metrics.done[0]
        assert (done.model, done.prompt_tokens, done.completion_tokens) == (EMBED, r.usage.prompt_tokens, 0)
        assert done.ttft is None and done.itl is None and done.e2e > 0
    finally:
        await app.aclose()
