"""The simulated engine's side of the embeddings contract (serving/engine/base.py): what the API layer relies on.

The real engine's side is tests/e2e/test_embeddings_engine.py.
"""

from __future__ import annotations

import pytest

from serving.engine.base import EmbedRequest, EngineRequest, GenerationParams
from serving.engine.simulator import SimulatedEngine, SimulatorConfig
from serving.errors import InvalidRequestError


@pytest.fixture
async def embedder() -> SimulatedEngine:
    engine = SimulatedEngine(SimulatorConfig(max_model_len=32, ttft_base_s=0, embedding_size=16), task="embed")
    info = await engine.start()
    assert (info.task, info.embedding_size) == ("embed", 16)
    return engine


async def test_one_unit_vector_per_input_in_order_the_same_input_the_same_vector(embedder):
    out = await embedder.embed(EmbedRequest("r", ["a cat", [5, 6, 7], "a dog", "a cat"]))
    assert len(out.embeddings) == 4 and all(len(v) == 16 for v in out.embeddings)
    assert all(abs(sum(x * x for x in v) - 1) < 1e-9 for v in out.embeddings)
    assert out.embeddings[0] == out.embeddings[3] != out.embeddings[2]
    assert out.prompt_tokens == 2 + 3 + 2 + 2  # the simulator's tokens: runs of up to 4 characters


async def test_dimensions_keep_the_leading_ones_renormalized_and_are_bounded(embedder):
    full = (await embedder.embed(EmbedRequest("r", ["text"]))).embeddings[0]
    short = (await embedder.embed(EmbedRequest("r", ["text"], dimensions=4))).embeddings[0]
    norm = sum(x * x for x in full[:4]) ** 0.5
    assert short == pytest.approx([x / norm for x in full[:4]])
    for bad in (0, 17):
        with pytest.raises(InvalidRequestError) as err:
            await embedder.embed(EmbedRequest("r", ["text"], dimensions=bad))
        assert err.value.param == "dimensions"


async def test_bad_inputs_name_the_input(embedder):
    cases = {
        "empty": ([""], "input", None),
        "too long": (["x" * 4 * 33], "input", "context_length_exceeded"),
        "bad ids": ([[1, -1]], "input", None),
    }
    for name, (inputs, param, code) in cases.items():
        with pytest.raises(InvalidRequestError) as err:
            await embedder.embed(EmbedRequest("r", inputs))
        assert err.value.param == param and (code is None or err.value.code == code), name


async def test_an_embedding_model_refuses_generation_and_a_generating_one_embeddings(embedder):
    with pytest.raises(InvalidRequestError) as err:
        async for _ in embedder.generate(EngineRequest("r", GenerationParams(max_tokens=2), prompt="hi")):
            pass
    assert err.value.code == "model_not_generative"
    generator = SimulatedEngine(SimulatorConfig(ttft_base_s=0))
    await generator.start()
    with pytest.raises(InvalidRequestError) as err:
        await generator.embed(EmbedRequest("r", ["hi"]))
    assert err.value.code == "model_not_embedding"
