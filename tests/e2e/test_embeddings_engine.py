"""The embeddings contract (serving/engine/base.py) on the real vLLM engine: its pooling runner, the tiny
embedding model built offline (serving/models/tiny_embed.py), in this process (no Serve: the engine alone).

What the simulated engine promises (tests/unit/test_simulated_embeddings.py), vLLM must keep: one unit
vector per input in order, the same input the same vector, token ids as inputs, Matryoshka `dimensions`,
and clear errors naming the input for empty, out-of-vocabulary and too-long inputs.
"""

from __future__ import annotations

import math

import pytest

from serving.config import ModelConfig
from serving.engine.base import EmbedRequest, EngineRequest, GenerationParams
from serving.engine.factory import make_engine
from serving.errors import InvalidRequestError
from serving.models.tiny_embed import HIDDEN_SIZE, MAX_POSITIONS


@pytest.fixture(scope="module")
async def engine():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        cfg = ModelConfig(id="tiny-embed", source="builtin:tiny-embed", task="embed", engine_args={"dtype": "float32"})
        made = make_engine(cfg)
        info = await made.start()
    assert (info.task, info.embedding_size, info.max_model_len) == ("embed", HIDDEN_SIZE, MAX_POSITIONS)
    yield made
    await made.shutdown()


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


async def test_one_unit_vector_per_input_in_order(engine):
    out = await engine.embed(EmbedRequest("e1", ["the cat sat", "a tax form", "the cat sat"]))
    assert len(out.embeddings) == 3 and all(len(v) == HIDDEN_SIZE for v in out.embeddings)
    assert all(abs(norm(v) - 1) < 1e-4 for v in out.embeddings)
    assert out.embeddings[0] == pytest.approx(out.embeddings[2], abs=1e-5)
    assert sum(a * b for a, b in zip(out.embeddings[0], out.embeddings[1], strict=True)) < 0.999
    ids = await engine.tokenize(EngineRequest("t", GenerationParams(), prompt="the cat sat"))
    assert out.prompt_tokens == 2 * len(ids) + len(
        await engine.tokenize(EngineRequest("t", GenerationParams(), prompt="a tax form"))
    )
    by_ids = await engine.embed(EmbedRequest("e2", [ids]))
    assert by_ids.embeddings[0] == pytest.approx(out.embeddings[0], abs=1e-5)


async def test_matryoshka_dimensions(engine):
    out = await engine.embed(EmbedRequest("e3", ["the cat sat"], dimensions=64))
    assert len(out.embeddings[0]) == 64 and abs(norm(out.embeddings[0]) - 1) < 1e-4
    with pytest.raises(InvalidRequestError) as err:
        await engine.embed(EmbedRequest("e4", ["the cat sat"], dimensions=50))
    assert err.value.param == "dimensions" and "50" in err.value.message


async def test_bad_inputs_are_refused_and_the_engine_goes_on(engine):
    with pytest.raises(InvalidRequestError) as err:
        await engine.embed(EmbedRequest("e5", ["fine", [1] * (MAX_POSITIONS + 1)]))
    assert (err.value.param, err.value.code) == ("input", "context_length_exceeded")
    assert "input 1" in err.value.message
    for bad in ([""], [[10**6]]):
        with pytest.raises(InvalidRequestError) as err:
            await engine.embed(EmbedRequest("e6", bad))
        assert err.value.param == "input"
    with pytest.raises(InvalidRequestError) as err:
        async for _ in engine.generate(EngineRequest("g", GenerationParams(max_tokens=2), prompt="hi")):
            pass
    assert err.value.code == "model_not_generative"
    assert len((await engine.embed(EmbedRequest("e7", ["still serving"]))).embeddings) == 1
