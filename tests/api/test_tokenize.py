"""POST /tokenize and /detokenize in-process, on the simulated engine (tests/e2e/test_tools.py: the real tokenizer)."""

from __future__ import annotations

import pytest

from tests.inprocess import MODEL

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.fixture
async def server(make_app):
    return await make_app({"max_model_len": 1024})


async def test_a_chats_count_is_its_prompt_tokens(server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather?"}]
    r = await server.http.post("/tokenize", json={"model": MODEL, "messages": messages, "tools": [WEATHER]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 1024
    chat = await server.client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=30
    )
    assert chat.usage.prompt_tokens == body["count"]
    without_tools = (await server.http.post("/tokenize", json={"model": MODEL, "messages": messages})).json()
    assert without_tools["count"] < body["count"]


async def test_a_prompts_count_and_detokenize(server):
    r = await server.http.post("/tokenize", json={"model": MODEL, "prompt": "one two three"})
    tokens = r.json()["tokens"]
    done = await server.client.completions.create(model=MODEL, prompt="one two three", max_tokens=1)
    assert done.usage.prompt_tokens == len(tokens)
    r = await server.http.post("/detokenize", json={"model": MODEL, "tokens": tokens})
    assert r.status_code == 200 and r.json()["prompt"]


BAD = [
    ("/tokenize", {"model": MODEL}, 400, None),
    ("/tokenize", {"model": MODEL, "prompt": "x", "messages": [{"role": "user", "content": "x"}]}, 400, None),
    ("/tokenize", {"model": MODEL, "prompt": "x", "tools": [WEATHER]}, 400, None),
    ("/tokenize", {"model": MODEL, "messages": []}, 400, "messages"),
    ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("/tokenize", {"model": MODEL, "prompt": "x", "return_token_strs": True}, 400, "return_token_strs"),
    ("/detokenize", {"model": MODEL, "tokens": [-1]}, 400, "tokens.0"),
    ("/detokenize", {"model": MODEL, "tokens": [10**9]}, 400, "tokens"),
    ("/detokenize", {"model": MODEL, "tokens": "1 2"}, 400, "tokens"),
]


@pytest.mark.parametrize("path,body,status,param", BAD)
async def test_bad_requests_are_openai_errors(server, path, body, status, param):
    r = await server.http.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param, err
