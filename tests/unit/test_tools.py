"""serving/api/tools.py: the schemas that force calls, and reading calls back from constrained output."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from serving.api.protocol import ChatCompletionRequest
from serving.api.tools import CallArray, NamedCall, ToolCallStream, constrained_schema, engine_messages, engine_tools
from serving.engine.base import ChoiceDelta
from serving.engine.simulator import schema_instance

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}


def request(**fields) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    return ChatCompletionRequest.model_validate_json(json.dumps(body), strict=True)


def test_required_schema_accepts_exactly_calls_of_the_tools():
    schema = constrained_schema(request(tools=[WEATHER, TIME], tool_choice="required"))
    ok = [{"name": "get_weather", "parameters": {"city": "Oslo"}}, {"name": "get_time", "parameters": {}}]
    jsonschema.validate(ok, schema)
    for bad in ([], [{"name": "nope", "parameters": {}}], [{"name": "get_weather", "parameters": {}}], {"x": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_parallel_tool_calls_false_allows_one_call():
    schema = constrained_schema(request(tools=[TIME], tool_choice="required", parallel_tool_calls=False))
    jsonschema.validate([{"name": "get_time", "parameters": {}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_time", "parameters": {}}] * 2, schema)


def test_named_schema_is_the_function_parameters_and_auto_forces_nothing():
    named = request(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert constrained_schema(named) == WEATHER["function"]["parameters"]
    no_params = request(tools=[TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert constrained_schema(no_params) == {"type": "object", "properties": {}}
    assert constrained_schema(request(tools=[WEATHER])) is None
    assert constrained_schema(request(tools=[WEATHER], tool_choice="none")) is None


def test_tools_offered_to_the_template_unless_none():
    assert engine_tools(request(tools=[WEATHER], tool_choice="none")) is None
    (tool,) = engine_tools(request(tools=[TIME]))
    assert tool == {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    }


def test_history_calls_reach_the_template_with_arguments_as_data():
    req = request(
        messages=[
            {"role": "user", "content": "w?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "not json"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "sunny"}]},
        ]
    )
    _, assistant, tool = engine_messages(req.messages)
    assert assistant["content"] == ""
    assert [c["function"]["arguments"] for c in assistant["tool_calls"]] == [{"city": "Oslo"}, "not json"]
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


CALLS = [
    {"name": "get_weather", "parameters": {"city": 'Os}lo "x" [{', "tags": ["a", 'b\\"]}']}},
    {"name": "get_time", "parameters": {}},
]


@pytest.mark.parametrize("seed", range(20))
def test_call_array_finds_every_call_whatever_the_chunking(seed):
    text = json.dumps(CALLS)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), rng.randrange(0, 12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    reader = CallArray()
    found = [d for p in pieces for d in reader.feed(p)] + reader.finish()
    assert [(d.index, d.name) for d in found] == [(0, "get_weather"), (1, "get_time")]
    assert [json.loads(d.arguments) for d in found] == [c["parameters"] for c in CALLS]
    assert all(d.id and d.id.startswith("call_") for d in found) and found[0].id != found[1].id


def test_named_call_streams_arguments_with_one_header():
    reader = NamedCall("f")
    deltas = reader.feed('{"a"') + reader.feed(": 1") + reader.feed("}") + reader.finish()
    assert [(d.id is not None, d.name, d.arguments) for d in deltas] == [
        (True, "f", '{"a"'),
        (False, None, ": 1"),
        (False, None, "}"),
    ]


def test_call_stream_finishes_with_tool_calls_only_when_a_call_was_made():
    stream = ToolCallStream(request(tools=[TIME], tool_choice="required"))
    text, calls = stream.split(ChoiceDelta(0, '[{"name":"get_time","parameters":{}}]', 3, "stop"))
    assert text == "" and [c.name for c in calls] == ["get_time"]
    assert stream.finish_reason(ChoiceDelta(0, "", 0, "stop")) == "tool_calls"
    cut = ToolCallStream(request(tools=[TIME], tool_choice="required"))
    text, calls = cut.split(ChoiceDelta(0, '[{"name":"get_', 3, "length"))
    assert calls == [] and text == '[{"name":"get_'
    assert cut.finish_reason(ChoiceDelta(0, "", 0, "length")) == "length"


@pytest.mark.parametrize(
    "schema",
    [
        WEATHER["function"]["parameters"],
        {
            "type": "object",
            "properties": {"n": {"type": "integer", "minimum": 3}, "k": {"enum": ["x", "y"]}},
            "required": ["n", "k"],
        },
        {"type": "array", "minItems": 2, "items": {"anyOf": [{"type": "boolean"}, {"type": "null"}]}},
        {"type": ["number", "null"], "minimum": 1.5},
    ],
)
def test_the_simulator_writes_an_instance_of_the_schema(schema):
    jsonschema.validate(schema_instance(schema), schema)


def test_the_simulators_instance_is_capped_whatever_the_schema_asks():
    huge = {"type": "array", "minItems": 10**9, "items": {"type": "string", "minLength": 10**9}}
    instance = schema_instance(huge)
    assert len(instance) == 8 and all(len(s) == 64 for s in instance)
