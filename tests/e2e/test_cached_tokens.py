"""A request's prompt-cache hits on the real vLLM engine, as the official openai client reads them.

vLLM counts each request's prompt tokens found in its prefix cache (`RequestOutput.num_cached_tokens`, set
when the request is first scheduled); the engine contract carries them (`EngineOutput.cached_tokens`) and
the API reports them as OpenAI does: `usage.prompt_tokens_details.cached_tokens` on chat (whole bodies
and a stream's usage chunk), `usage.input_tokens_details.cached_tokens` on Responses. Two requests share
a long system prompt: the second must find it cached, in whole blocks of the engine's block size.

The app runs in this process (the real `build_api` and `OpenAIServing` over the real `VLLMEngine`, no Serve):
the serving path between them is the one tests/unit/test_cached_tokens.py covers on the simulator, also
forwarded between replicas.
"""

from __future__ import annotations

import pytest

from serving.api.openai_serving import OpenAIServing
from serving.config import ModelConfig
from serving.engine.base import EngineRequest, GenerationParams
from serving.engine.factory import make_engine
from tests.inprocess import InProcessApp

MODEL = "tiny-llama"
BLOCK = 32  # a multiple of 32, as vLLM's CPU backend prefers (its default is 128)


def system_prompt(topic: str) -> str:
    return f"You answer questions about {topic}. " + " ".join(
        f"Rule {i}: keep every answer about {topic} short and plain." for i in range(10)
    )


@pytest.fixture(scope="module")
async def served():
    """(the in-process app, its engine)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        cfg = ModelConfig(
            id=MODEL,
            source="builtin:tiny-llama",
            engine_args={"dtype": "bfloat16", "max_model_len": 1024, "enable_prefix_caching": True,
                         "block_size": BLOCK},
        )  # fmt: skip
        engine = make_engine(cfg)
        info = await engine.start()
    assert engine._llm.vllm_config.cache_config.block_size == BLOCK  # what vLLM runs with (not overridden)
    app = InProcessApp([OpenAIServing(engine, MODEL, info.max_model_len)])
    yield app, engine
    await app.aclose()
    await engine.shutdown()


def chat(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


async def shared_blocks(engine, system: str, cached: str, asked: str) -> tuple[int, int]:
    """(the system prompt's tokens, the tokens vLLM can find cached of chat `asked` after chat `cached`: the
    whole blocks of their common templated prefix, never the block of the prompt's last token)."""

    async def ids(messages: list[dict[str, str]]) -> list[int]:
        return await engine.tokenize(EngineRequest("t", GenerationParams(), messages=messages))

    a, b = await ids(chat(system, cached)), await ids(chat(system, asked))
    common = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    alone = len(await engine.tokenize(EngineRequest("t", GenerationParams(), prompt=system)))
    return alone, min(common // BLOCK, (len(b) - 1) // BLOCK) * BLOCK


async def test_the_second_of_two_chats_with_one_system_prompt_reports_it_cached(served):
    app, engine = served
    system = system_prompt("rivers")
    ask = app.client.chat.completions.create
    first = await ask(model=MODEL, messages=chat(system, "Which is longest?"), max_tokens=4, temperature=0)
    second = await ask(model=MODEL, messages=chat(system, "Which is widest?"), max_tokens=4, temperature=0)
    system_tokens, expected = await shared_blocks(engine, system, "Which is longest?", "Which is widest?")
    assert system_tokens >= 200 and expected >= system_tokens - BLOCK
    hit, before = second.usage.prompt_tokens_details.cached_tokens, first.usage.prompt_tokens_details.cached_tokens
    assert hit == expected and hit % BLOCK == 0, (second.usage, expected)
    assert before < hit and before % BLOCK == 0, first.usage
    assert hit < second.usage.prompt_tokens  # the question is computed
    # the same prompt by the Responses API (instructions are its system message): at least those blocks
    response = await app.client.responses.create(
        model=MODEL, instructions=system, input="Which is deepest?", max_output_tokens=4
    )
    cached = response.usage.input_tokens_details.cached_tokens
    assert cached >= system_tokens - BLOCK and cached % BLOCK == 0, response.usage


async def test_a_stream_s_usage_chunk_reports_the_cached_tokens(served):
    app, engine = served
    system = system_prompt("mountains")  # not cached yet: another topic from its first words on
    usages = []
    for question in ("Which is highest?", "Which is oldest?"):
        stream = await app.client.chat.completions.create(
            model=MODEL,
            messages=chat(system, question),
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
        usages.append(chunks[-1].usage)
    first, second = usages
    system_tokens, expected = await shared_blocks(engine, system, "Which is highest?", "Which is oldest?")
    assert system_tokens >= 200
    hit = second.prompt_tokens_details.cached_tokens
    assert hit == expected and hit % BLOCK == 0 and hit >= system_tokens - BLOCK, (second, expected)
    assert first.prompt_tokens_details.cached_tokens < hit, first
