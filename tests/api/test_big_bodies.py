"""Whole bodies with logprobs are built and written in pieces, with the event loop free between them.

At the default limits a non-streaming body with logprobs is 11.7 MB (n=4,
top_logprobs=20, 2,000 tokens). Joined and encoded as one bytes object, then
written at once, it held the replica's loop for 30-80 ms on the real engine
(the largest gap of a concurrent stream came at the end of such a request:
`python -m loadtests.hostile --config configs/dev.yaml --cases logprobs-at-limit`).
"""

from __future__ import annotations

import asyncio
import json

from serving.api.openai_serving import OpenAIServing
from serving.api.streaming import PIECE_BYTES, EncodedBody, EncodedBodyResponse
from tests.inprocess import simulated_app
from tests.unit.request_factories import chat, completion

N, TOKENS, TOP = 4, 300, 20


async def _serving() -> OpenAIServing:
    api = await simulated_app()
    assert api.serving is not None
    return api.serving


async def test_a_chat_body_with_logprobs_is_encoded_in_pieces_that_join_to_the_openai_body():
    serving = await _serving()
    req = chat(n=N, max_tokens=TOKENS, ignore_eos=True, logprobs=True, top_logprobs=TOP)
    body = await serving.chat(req, "rid")
    assert isinstance(body, EncodedBody), type(body)
    assert len(body) > 4 * PIECE_BYTES and len(body.parts) > 4
    assert max(len(p) for p in body.parts) < 2 * PIECE_BYTES, max(len(p) for p in body.parts)
    data = json.loads(body.join())
    assert data["object"] == "chat.completion" and data["id"] == "chatcmpl-rid"
    assert [c["index"] for c in data["choices"]] == list(range(N))
    for c in data["choices"]:
        assert list(c) == ["index", "message", "logprobs", "finish_reason"]
        assert c["finish_reason"] == "length" and c["message"]["role"] == "assistant"
        content = c["logprobs"]["content"]
        assert len(content) == TOKENS and all(len(t["top_logprobs"]) == TOP for t in content)
        assert "".join(t["token"] for t in content) == c["message"]["content"]
    assert data["usage"]["completion_tokens"] == N * TOKENS
    assert body.total_tokens == data["usage"]["total_tokens"]


async def test_a_completions_body_with_logprobs_is_encoded_in_pieces_that_join_to_the_openai_body():
    serving = await _serving()
    req = completion(n=N, max_tokens=TOKENS, ignore_eos=True, logprobs=5)
    body = await serving.completions(req, "rid")
    assert isinstance(body, EncodedBody), type(body)
    assert max(len(p) for p in body.parts) < 2 * PIECE_BYTES
    data = json.loads(body.join())
    for c in data["choices"]:
        lp = c["logprobs"]
        assert list(lp) == ["tokens", "token_logprobs", "top_logprobs", "text_offset"]
        assert all(len(lp[k]) == TOKENS for k in lp)
        assert "".join(lp["tokens"]) == c["text"]
        assert lp["text_offset"][0] == 0 and lp["text_offset"][-1] == len(c["text"]) - len(lp["tokens"][-1])
    assert body.total_tokens == data["usage"]["total_tokens"]


async def test_a_body_without_logprobs_stays_a_plain_dict():
    serving = await _serving()
    body = await serving.chat(chat(n=2, max_tokens=5), "rid")
    assert isinstance(body, dict) and [c["logprobs"] for c in body["choices"]] == [None, None]


async def test_an_encoded_body_is_written_in_slices_with_the_loop_free_between_them():
    parts = [b'{"a":['] + [b'"' + b"x" * 1000 + b'",' for _ in range(1000)] + [b'"end"]}']
    body = EncodedBody(parts, total_tokens=7)
    ticks = 0
    ticking = True

    async def ticker() -> None:
        nonlocal ticks
        while ticking:
            ticks += 1
            await asyncio.sleep(0)

    sent: list[tuple[dict, int]] = []

    async def send(message: dict) -> None:  # as a transport whose buffer never fills: no await that yields
        sent.append((message, ticks))

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await EncodedBodyResponse(body)({"type": "http"}, None, send)  # type: ignore[arg-type]
    ticking = False
    await task

    start, *chunks = sent
    assert start[0]["type"] == "http.response.start"
    headers = dict(start[0]["headers"])
    assert headers[b"content-length"] == str(len(body)).encode() and headers[b"content-type"] == b"application/json"
    assert b"".join(m["body"] for m, _ in chunks) == body.join()
    assert [m["more_body"] for m, _ in chunks] == [True] * (len(chunks) - 1) + [False]
    assert len(chunks) >= len(body) // PIECE_BYTES
    assert all(len(m["body"]) < 2 * PIECE_BYTES for m, _ in chunks)
    seen = [t for _, t in chunks]
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), f"the loop did not run between writes: {seen}"


async def test_the_openai_sdk_reads_a_body_written_in_pieces():
    api = await simulated_app()
    r = await api.client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": "hi"}],
        n=N,
        max_tokens=TOKENS,
        logprobs=True,
        top_logprobs=TOP,
        extra_body={"ignore_eos": True},
    )
    assert len(r.choices) == N
    assert all(len(c.logprobs.content) == TOKENS for c in r.choices)  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.completion_tokens == N * TOKENS
    await api.aclose()
