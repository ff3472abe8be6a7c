"""The simulated engine's model: tokens, timings, prefix cache, faults, cancellation.

Timings are real `asyncio.sleep`s kept short; assertions allow scheduling slack.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.engine.base import EngineRequest, GenerationParams
from serving.engine.simulator import (
    PrefixCache,
    SimulatedEngine,
    SimulatorConfig,
    block_hashes,
    render_chat,
    tokenize,
)
from serving.errors import EngineError, EngineUnavailableError, InvalidRequestError, PromptTooLongError

FAST = {"ttft_base_s": 0.0, "prefill_s_per_token": 0.0, "decode_s_per_token": 0.0005}


async def engine(**args) -> SimulatedEngine:
    e = SimulatedEngine.from_engine_args({**FAST, **args})
    await e.start()
    return e


def req(prompt: str | None = None, *, messages=None, ids=None, rid="r", **params) -> EngineRequest:
    return EngineRequest(
        request_id=rid,
        params=GenerationParams(**{"max_tokens": 4, **params}),
        prompt=prompt,
        messages=messages,
        prompt_token_ids=ids,
    )


async def collect(e: SimulatedEngine, r: EngineRequest):
    outs = [o async for o in e.generate(r)]
    n = max(c.index for o in outs for c in o.choices) + 1
    texts = ["".join(c.text for o in outs for c in o.choices if c.index == i) for i in range(n)]
    finish = [
        next(c.finish_reason for o in outs for c in o.choices if c.index == i and c.finish_reason) for i in range(n)
    ]
    tokens = sum(c.num_tokens for o in outs for c in o.choices)
    return outs, texts, finish, tokens


async def ttft(e: SimulatedEngine, r: EngineRequest) -> float:
    t0 = time.perf_counter()
    gen = e.generate(r)
    await gen.__anext__()
    elapsed = time.perf_counter() - t0
    await gen.aclose()
    return elapsed


def words(n: int, tag: str = "w") -> str:
    """n tokens of the simulator's tokenizer: each word is <= 4 chars."""
    return " ".join(f"{tag}{i % 100:02d}"[:4] for i in range(n))


# -- config ---------------------------------------------------------------------


def test_unknown_engine_arg_is_named():
    with pytest.raises(ValueError, match="'max_modle_len'"):
        SimulatedEngine.from_engine_args({"max_modle_len": 10})


@pytest.mark.parametrize(
    "args", [{"max_model_len": 0}, {"error_rate": 1.5}, {"decode_s_per_token": -1}, {"block_size": "16"}]
)
def test_bad_engine_arg_values(args):
    with pytest.raises(ValueError):
        SimulatedEngine.from_engine_args(args)


def test_defaults_are_valid():
    assert SimulatedEngine.from_engine_args({}).config == SimulatorConfig()


# -- tokenizer and hashing --------------------------------------------------------


def test_tokenizer_is_deterministic_char_chunks():
    assert tokenize("hello big world") == ["hell", "o", "big", "worl", "d"]
    assert tokenize("  ") == []
    assert len(tokenize(words(100))) == 100
    assert render_chat([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_block_hashes_are_chained():
    a = block_hashes(list(range(40)), 16)
    assert len(a) == 2  # only full blocks
    b = block_hashes([99] + list(range(1, 40)), 16)
    # Same second block content, different first block: a different chain from the start.
    assert a[0] != b[0] and a[1] != b[1]
    assert block_hashes(list(range(40)), 16) == a


def test_prefix_cache_lru_is_bounded_and_evicts_chain_tails_first():
    cache = PrefixCache(capacity=4)
    cache.insert([1, 2, 3])
    assert cache.match([1, 2, 3]) == 3
    cache.insert([7, 8])  # evicts the least recently used: the tail of the 1-2-3 chain
    assert len(cache) == 4
    assert cache.match([1, 2, 3]) == 2
    assert cache.match([7, 8]) == 2
    disabled = PrefixCache(capacity=0)
    disabled.insert([1])
    assert disabled.match([1]) == 0


# -- timing model -----------------------------------------------------------------


async def test_ttft_is_base_plus_uncached_prompt_tokens():
    e = await engine(ttft_base_s=0.05, prefill_s_per_token=0.001, prefix_cache_blocks=0)
    short = await ttft(e, req(words(10)))
    long = await ttft(e, req(words(210)))
    assert 0.05 <= short < 0.05 + 0.01 + 0.04
    assert 0.26 <= long < 0.26 + 0.06
    assert long - short == pytest.approx(0.2, abs=0.04)


async def test_prefix_cache_hit_cuts_ttft_and_counts_tokens():
    e = await engine(ttft_base_s=0.01, prefill_s_per_token=0.001, block_size=16)
    system = words(320, "s")  # 320 tokens: 20 full blocks
    first = await ttft(e, req(system + " " + words(8, "a")))
    second = await ttft(e, req(system + " " + words(8, "b")))
    s = await e.stats()
    assert s["prefix_cache_queries"] == 2 * 328
    assert s["prefix_cache_hits"] == 320  # the shared 20 blocks, on the second request
    assert first > 0.3 and second < 0.1


async def test_whole_prompt_hit_still_computes_the_last_token():
    e = await engine(block_size=16)
    prompt = words(32)  # exactly two blocks
    await collect(e, req(prompt))
    await collect(e, req(prompt))
    assert (await e.stats())["prefix_cache_hits"] == 16


async def test_every_output_states_the_prompt_s_cached_tokens():
    """The contract's `cached_tokens` (serving/engine/base.py): the request's own hits, on every output."""
    e = await engine(block_size=16)
    system = words(100, "s")  # 6 full blocks and 4 tokens
    first, _, _, _ = await collect(e, req(system + " " + words(8, "a"), max_tokens=3))
    second, _, _, _ = await collect(e, req(system + " " + words(8, "b"), max_tokens=3))
    assert [o.cached_tokens for o in first] == [0, 0, 0]
    assert [o.cached_tokens for o in second] == [96, 96, 96]  # whole blocks of the shared system prompt
    whole, _, _, _ = await collect(e, req(words(32, "w")))
    again, _, _, _ = await collect(e, req(words(32, "w"), n=2))
    assert whole[0].cached_tokens == 0 and {o.cached_tokens for o in again} == {16}  # the last block is computed


async def test_without_a_prefix_cache_nothing_is_cached():
    e = await engine(block_size=16, prefix_cache_blocks=0)
    for _ in range(2):
        outs, _, _, _ = await collect(e, req(words(64)))
        assert {o.cached_tokens for o in outs} == {0}


async def test_prefix_cache_capacity_evicts_old_prompts():
    e = await engine(block_size=16, prefix_cache_blocks=30)
    a, b = words(320, "a"), words(320, "b")  # 20 blocks each, 30 fit
    for p in (a, b, a):
        await collect(e, req(p))
    s = await e.stats()
    assert s["prefix_cache_blocks_used"] <= 30
    assert s["prefix_cache_hits"] < 20 * 16  # a's chain lost its tail to b


async def test_prefills_of_a_replica_queue_behind_each_other():
    e = await engine(ttft_base_s=0.0, prefill_s_per_token=0.001, prefix_cache_blocks=0)
    t = await asyncio.gather(ttft(e, req(words(100, "x"))), ttft(e, req(words(100, "y"))))
    assert sorted(t)[0] == pytest.approx(0.1, abs=0.04)
    assert sorted(t)[1] == pytest.approx(0.2, abs=0.05)


async def test_decode_slows_down_with_the_batch():
    e = await engine(decode_s_per_token=0.01, decode_batch_slowdown=0.5)

    async def duration():
        t0 = time.perf_counter()
        await collect(e, req("hi", max_tokens=11, ignore_eos=True))
        return time.perf_counter() - t0

    alone = await duration()
    together = await asyncio.gather(*(duration() for _ in range(5)))
    assert alone == pytest.approx(0.1, abs=0.04)  # 10 steps after the first token
    # 5 running: each step takes 0.01 * (1 + 0.5 * 4) = 0.03
    assert min(together) == pytest.approx(0.3, abs=0.08)


async def test_requests_beyond_max_num_seqs_wait():
    e = await engine(decode_s_per_token=0.02, max_num_seqs=2)
    tasks = [asyncio.create_task(collect(e, req("hi", max_tokens=5))) for _ in range(5)]
    await asyncio.sleep(0.03)
    s = await e.stats()
    assert s["running"] == 2 and s["waiting"] == 3
    await asyncio.gather(*tasks)
    s = await e.stats()
    assert s["running"] == 0 and s["waiting"] == 0 and s["requests_finished"] == 5


# -- cancellation -----------------------------------------------------------------


async def test_cancelling_the_consumer_frees_the_running_slot():
    e = await engine(decode_s_per_token=0.05)
    started = asyncio.Event()

    async def consume():
        async for _ in e.generate(req("hi", max_tokens=100)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    assert (await e.stats())["running"] == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = await e.stats()
    assert s["running"] == 0 and s["requests_cancelled"] == 1


async def test_closing_the_generator_frees_the_running_slot():
    e = await engine(decode_s_per_token=0.05)
    gen = e.generate(req("hi", max_tokens=100))
    await gen.__anext__()
    assert (await e.stats())["running"] == 1
    await gen.aclose()
    assert (await e.stats())["running"] == 0


async def test_cancelling_a_waiting_request_frees_its_place():
    e = await engine(decode_s_per_token=0.05, max_num_seqs=1)
    first = e.generate(req("hi", max_tokens=100))
    await first.__anext__()
    waiter = asyncio.create_task(e.generate(req("hi", max_tokens=100)).__anext__())
    await asyncio.sleep(0.02)
    assert (await e.stats())["waiting"] == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await first.aclose()
    s = await e.stats()
    assert s["waiting"] == 0 and s["running"] == 0
    await collect(e, req("hi"))  # the slot is usable again


# -- context, sampling parameters, text --------------------------------------------


async def test_prompt_too_long_is_raised_before_the_first_yield():
    e = await engine(max_model_len=64)
    gen = e.generate(req(words(80)))
    with pytest.raises(PromptTooLongError):
        await gen.__anext__()
    with pytest.raises(PromptTooLongError):
        await e.generate(req(words(60), max_tokens=10)).__anext__()
    assert (await e.stats())["running"] == 0


async def test_without_max_tokens_the_context_bounds_the_output():
    e = await engine(max_model_len=40, decode_s_per_token=0.0)
    _, _, finish, tokens = await collect(e, req(words(30), max_tokens=None))
    assert tokens == 10 and finish == ["length"]


async def test_token_ids_outside_the_vocabulary():
    e = await engine(vocab_size=100)
    with pytest.raises(InvalidRequestError):
        await e.generate(req(ids=[1, 2, 300])).__anext__()
    _, _, _, tokens = await collect(e, req(ids=[1, 2, 3], max_tokens=3))
    assert tokens == 3


async def test_seed_makes_text_deterministic():
    e = await engine()
    a = (await collect(e, req("hi", seed=7, max_tokens=20)))[1]
    b = (await collect(e, req("hi", seed=7, max_tokens=20)))[1]
    c = (await collect(e, req("hi", seed=8, max_tokens=20)))[1]
    g1 = (await collect(e, req("hi", temperature=0.0, max_tokens=20)))[1]
    g2 = (await collect(e, req("hi", temperature=0.0, max_tokens=20)))[1]
    assert a == b and a != c and g1 == g2
    with_lp = await collect(e, req("hi", seed=7, max_tokens=20, logprobs=2))
    assert with_lp[1] == a
    lps = [lp for o in with_lp[0] for c in o.choices for lp in c.logprobs]
    assert len(lps) == 20 and all(len(lp.top) == 2 and lp.logprob <= 0 for lp in lps)


async def test_n_choices():
    e = await engine()
    outs, texts, finish, tokens = await collect(e, req("hi", n=3, seed=1, max_tokens=5))
    assert len(texts) == 3 and len(set(texts)) == 3
    assert finish == ["length"] * 3 and tokens == 15
    assert all(o.prompt_tokens == 1 for o in outs)


async def test_stop_strings_truncate_and_are_never_streamed():
    e = await engine()
    free = (await collect(e, req("hi", seed=3, max_tokens=50)))[1][0]
    stop = free[len(free) // 2 : len(free) // 2 + 3]
    outs, texts, finish, _ = await collect(e, req("hi", seed=3, max_tokens=50, stop=[stop, "zzzz"]))
    assert finish == ["stop"]
    assert texts[0] == free[: free.index(stop)]
    assert all(stop not in c.text for o in outs for c in o.choices)


async def test_eos_respects_min_tokens_and_ignore_eos():
    e = await engine(eos_probability=1.0)
    assert (await collect(e, req("hi", max_tokens=10)))[2:] == (["stop"], 1)
    assert (await collect(e, req("hi", max_tokens=10, min_tokens=4)))[2:] == (["stop"], 5)
    assert (await collect(e, req("hi", max_tokens=10, ignore_eos=True)))[2:] == (["length"], 10)


async def test_chat_messages_are_templated():
    e = await engine()
    messages = [{"role": "user", "content": "hello there"}]
    outs, *_ = await collect(e, req(messages=messages))
    assert outs[0].prompt_tokens == len(tokenize(render_chat(messages)))


# -- faults -----------------------------------------------------------------------


async def test_error_after_k_tokens():
    e = await engine(error_rate=1.0, error_after_tokens=2)
    got = []
    with pytest.raises(EngineError):
        async for o in e.generate(req("hi", max_tokens=10)):
            got.append(o)
    assert len(got) == 2
    s = await e.stats()
    assert s["requests_failed"] == 1 and s["running"] == 0


async def test_error_before_the_first_token():
    e = await engine(error_rate=1.0, error_after_tokens=0)
    with pytest.raises(EngineError):
        await e.generate(req("hi")).__anext__()
    assert (await e.stats())["running"] == 0


async def test_error_rate_is_a_fraction():
    e = await engine(error_rate=0.5, error_after_tokens=0, fault_seed=1)
    failed = 0
    for _ in range(200):
        try:
            await collect(e, req("hi", max_tokens=1))
        except EngineError:
            failed += 1
    assert 70 < failed < 130


async def test_engine_dies_after_fail_after_s():
    e = await engine(fail_after_s=0.2, decode_s_per_token=0.02)
    await e.check_health()
    gen = e.generate(req("hi", max_tokens=1000))
    await gen.__anext__()
    with pytest.raises(EngineUnavailableError):
        async for _ in gen:
            pass
    with pytest.raises(EngineUnavailableError):
        await e.check_health()
    with pytest.raises(EngineUnavailableError):
        await e.generate(req("hi")).__anext__()
    assert (await e.stats())["running"] == 0


async def test_startup_delay_and_health_before_start():
    e = SimulatedEngine.from_engine_args({"startup_delay_s": 0.1})
    with pytest.raises(EngineUnavailableError):
        await e.check_health()
    t0 = time.perf_counter()
    info = await e.start()
    assert time.perf_counter() - t0 >= 0.1
    assert info.max_model_len == 4096
    await e.check_health()
    await e.shutdown()
    with pytest.raises(EngineUnavailableError):
        await e.check_health()
