"""Tool calling and what real clients send, in-process: the official openai SDK against the simulated engine.

The simulator answers a forced call (`required`, a named function) with the
smallest instance of the constrained schema, and `tool_choice: auto` by
"calling" the first tool through its own parser (serving/engine/simulator.py);
the serving layer reads, streams and finishes the calls as it does for vLLM.
The same round trips run against the real engine in tests/e2e/test_tools.py.
"""

from __future__ import annotations

import json

import openai
import pytest

from serving.engine.simulator import render_chat, tokenize
from tests.inprocess import MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
async def server(make_app):
    return await make_app({"max_model_len": 1024})


def streamed_calls(chunks) -> tuple[dict[int, dict], list[str | None], str]:
    """Tool calls assembled from stream deltas as a client does, the finish reasons, and the content."""
    calls: dict[int, dict] = {}
    finish, content = [], ""
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for d in choice.delta.tool_calls or ():
                call = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
                if d.id:
                    assert call["id"] is None, "a call's id is sent once, in its first delta"
                    call["id"], call["name"] = d.id, d.function.name
                call["arguments"] += d.function.arguments or ""
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    return calls, finish, content


# -- forced calls: structured output from the tools' schemas ---------------------------------


async def test_required_call_whole_body(server):
    r = await server.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", max_tokens=200
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 0}


async def test_named_call_streams_its_arguments_as_they_come(server):
    stream = await server.client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[TIME, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=200,
        stream=True,
    )
    chunks = [c async for c in stream]
    calls, finish, content = streamed_calls(chunks)
    assert finish == ["tool_calls"] and content == ""
    assert [c["name"] for c in calls.values()] == ["get_weather"]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "days": 0}
    pieces = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or ()]
    assert len(pieces) > 3, "the arguments arrive in pieces, not in one delta at the end"


async def test_required_call_streamed_equals_whole(server):
    args = dict(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=200)
    whole = await server.client.chat.completions.create(**args)
    stream = await server.client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    calls, finish, _ = streamed_calls(chunks)
    assert finish == ["tool_calls"]
    (call,) = whole.choices[0].message.tool_calls
    assert calls[0]["name"] == call.function.name
    assert json.loads(calls[0]["arguments"]) == json.loads(call.function.arguments)
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


async def test_each_choice_gets_its_own_call(server):
    r = await server.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", n=3, max_tokens=200
    )
    ids = {c.message.tool_calls[0].id for c in r.choices}
    assert len(ids) == 3 and all(c.finish_reason == "tool_calls" for c in r.choices)


async def test_a_forced_call_cut_by_max_tokens_finishes_with_length(server):
    r = await server.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=2
    )
    choice = r.choices[0]
    assert choice.finish_reason == "length"
    assert not choice.message.tool_calls and choice.message.content  # what there is, as content


# -- auto: the engine's parser ---------------------------------------------------------------------


async def test_auto_call_whole_and_streamed(server):
    r = await server.client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=200)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and r.choices[0].finish_reason == "tool_calls"
    stream = await server.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=200, stream=True
    )
    calls, finish, _ = streamed_calls([c async for c in stream])
    assert finish == ["tool_calls"]
    assert json.loads(calls[0]["arguments"]) == json.loads(call.function.arguments)


async def test_tool_choice_none_is_plain_text(server):
    r = await server.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none", max_tokens=5
    )
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"


# -- a multi-turn tool loop, the history replayed as the SDK dumps it ------------------------------


async def test_tool_loop_replays_the_assistant_message_and_the_result(server):
    messages = list(ASK)
    first = await server.client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", max_tokens=200
    )
    assistant = first.choices[0].message
    # What clients append: the SDK's own dump of the message (refusal, audio, function_call... as null).
    messages.append(assistant.model_dump())
    for call in assistant.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})})
    second = await server.client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="none", max_tokens=8
    )
    assert second.choices[0].message.content
    # the call and its result were rendered (with `none`, the tools themselves are not offered)
    (call,) = assistant.tool_calls
    rendered = [
        {"role": "user", "content": ASK[0]["content"]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": "get_weather", "arguments": json.loads(call.function.arguments)}}
        ]},
        {"role": "tool", "content": json.dumps({"temp_c": 21}), "tool_call_id": call.id},
    ]  # fmt: skip
    assert second.usage.prompt_tokens == len(tokenize(render_chat(rendered)))


# -- what clients send that changes nothing ---------------------------------------------------------


async def test_nulls_metadata_and_replayed_fields_are_accepted(server):
    body = {
        "model": MODEL,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": "hello",
                "refusal": None,
                "annotations": [],
                "audio": None,
                "function_call": None,
                "tool_calls": None,
            },
            {"role": "user", "content": "again"},
        ],
        "max_tokens": 3,
        "n": None,
        "stream": None,
        "logprobs": None,
        "top_logprobs": None,
        "temperature": None,
        "stop": None,
        "metadata": {"team": "search"},
        "logit_bias": None,
        "reasoning_effort": None,
        "audio": None,
        "verbosity": None,
        "web_search_options": None,
        "store": False,
        "service_tier": "auto",
        "prompt_cache_key": "k1",
        "safety_identifier": "user-1",
        "user": "u",
        "parallel_tool_calls": True,
    }
    r = await server.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1
    stream = {**body, "stream": True, "stream_options": {"include_usage": True, "include_obfuscation": False}}
    r = await server.http.post("/v1/chat/completions", json=stream)
    assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]")
    r = await server.http.post(
        "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2, "echo": None, "n": None}
    )
    assert r.status_code == 200, r.text


# -- bad tools: a 400 naming the parameter, and the server goes on ------------------------------------


BAD = [
    ("duplicate-names", {"tools": [WEATHER, WEATHER]}, "tools.1.function.name"),
    (
        "named-not-in-tools",
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice.function.name",
    ),
    ("required-without-tools", {"tool_choice": "required"}, "tool_choice"),
    ("bad-choice-string", {"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ("not-a-function", {"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ("no-function-name", {"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools.0.function.name"),
    (
        "bad-function-name",
        {"tools": [{"type": "function", "function": {"name": "get weather!"}}]},
        "tools.0.function.name",
    ),
    (
        "parameters-not-object",
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
        "tools.0.function.parameters",
    ),
    (
        "parameters-invalid-schema",
        {
            "tools": [
                {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "minProperties": -1}}}
            ]
        },
        "tools.0.function.parameters",
    ),
    (
        "parameters-pattern-overflow",
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": {
                            "type": "object",
                            "properties": {"a": {"type": "string", "pattern": "a{99999999999}"}},
                        },
                    },
                }
            ]
        },
        "tools.0.function.parameters",
    ),
    (
        "parameters-too-deep",
        {
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "f",
                        "parameters": json.loads('{"type":"object","x":' * 100 + "1" + "}" * 100),
                    },
                }
            ]
        },
        "tools.0.function.parameters",
    ),
    (
        "forced-call-with-response-format",
        {"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}},
        "response_format",
    ),
    ("tool-message-without-id", {"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
    ("tool-calls-on-user", {"messages": [{"role": "user", "content": "x", "tool_calls": []}]}, "messages.0"),
    ("audio-replayed", {"messages": [{"role": "assistant", "content": "x", "audio": {"id": "a"}}]}, "messages.0.audio"),
    ("too-many-tools", {"tools": [WEATHER] * 129}, "tools"),
    ("unknown-field-still-refused", {"frobnicate": 1}, "frobnicate"),
    ("functions-with-tools", {"functions": [WEATHER["function"]], "tools": [WEATHER]}, "functions"),
    ("function-call-without-functions", {"function_call": "auto"}, "function_call"),
    (
        "function-call-names-missing",
        {"functions": [WEATHER["function"]], "function_call": {"name": "nope"}},
        "function_call.name",
    ),
    (
        "functions-invalid-schema",
        {"functions": [{"name": "f", "parameters": {"type": "object", "minProperties": -1}}]},
        "functions.0.parameters",
    ),
    ("logit-bias-not-served", {"logit_bias": {"1": 5}}, "logit_bias"),
    ("function-message-without-name", {"messages": [{"role": "function", "content": "x"}]}, "messages.0"),
]


@pytest.mark.parametrize("name,extra,param", BAD, ids=[b[0] for b in BAD])
async def test_bad_tools_are_400_naming_the_parameter(server, name, extra, param):
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **extra}
    r = await server.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param, err
    ok = await server.client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=2)
    assert ok.choices[0].message.content


async def test_auto_needs_a_parser(make_app):
    """A model whose engine has no tool parser cannot choose: `auto` is a 400, a forced call still works."""
    app = await make_app({"max_model_len": 1024})
    app.serving.tool_parser = None
    with pytest.raises(openai.BadRequestError) as exc:
        await app.client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=4)
    assert exc.value.body["param"] == "tool_choice" and exc.value.body["code"] == "tool_choice_unsupported"
    r = await app.client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="required", max_tokens=200
    )
    assert r.choices[0].message.tool_calls


async def test_legacy_functions_answered_in_their_own_shape(server):
    """`functions` / `function_call` (the form before tools): served as tools, answered as `function_call`."""
    function = WEATHER["function"]
    r = await server.client.chat.completions.create(
        model=MODEL, messages=ASK, functions=[function], function_call={"name": "get_weather"}, max_tokens=200
    )
    choice = r.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    assert json.loads(choice.message.function_call.arguments) == {"city": "Paris", "days": 0}
    stream = await server.client.chat.completions.create(
        model=MODEL, messages=ASK, functions=[function], max_tokens=200, stream=True
    )
    name, arguments, finish = None, "", []
    async for chunk in stream:
        for c in chunk.choices:
            if c.delta.function_call is not None:
                name = name or c.delta.function_call.name
                arguments += c.delta.function_call.arguments or ""
            assert not c.delta.tool_calls
            if c.finish_reason:
                finish.append(c.finish_reason)
    assert (
        name == "get_weather" and json.loads(arguments) == {"city": "Paris", "days": 0} and finish == ["function_call"]
    )
    # the history in the legacy shape: the assistant's function_call and a `function` message
    history = [
        *ASK,
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": arguments}},
        {"role": "function", "name": "get_weather", "content": "sunny"},
    ]
    r = await server.client.chat.completions.create(
        model=MODEL, messages=history, functions=[function], function_call="none", max_tokens=3
    )
    assert r.choices[0].message.content and r.choices[0].finish_reason == "length"


async def test_arguments_nested_past_any_template_stay_text(server):
    """A replayed call whose arguments nest 3000 deep: served (as text), not a 500 from the JSON parser's recursion."""
    deep = "[" * 3000 + "]" * 3000
    history = [
        *ASK,
        {
            "role": "assistant",
            "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": deep}}],
        },
        {"role": "tool", "tool_call_id": "1", "content": "ok"},
    ]
    r = await server.http.post("/v1/chat/completions", json={"model": MODEL, "messages": history, "max_tokens": 2})
    assert r.status_code in (200, 400), r.text  # 400 only for the context: the text counts as prompt
    r = await server.http.post("/tokenize", json={"model": MODEL, "messages": history})
    assert r.status_code == 200, r.text
