"""/v1/responses in-process: the official SDK's `responses` client against the simulated engine.

The same round trips against the real engine, across ingress paths: tests/e2e/test_responses.py.
"""

from __future__ import annotations

import json

import openai
import pytest

from serving.config import AuthConfig
from serving.engine.simulator import render_chat, tokenize
from tests.inprocess import MODEL

KEY_ENV = "RESPONSES_TEST_KEYS"
KEYS = ("sk-responses-one-0001", "sk-responses-two-0002")
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
        "required": ["city"],
    },
}


@pytest.fixture
async def server(make_app, monkeypatch):
    monkeypatch.setenv(KEY_ENV, ",".join(KEYS))
    return await make_app({"max_model_len": 2048}, auth=AuthConfig(api_keys_env=KEY_ENV), api_key=KEYS[0])


def tokens(messages) -> int:
    return len(tokenize(render_chat(messages)))


async def test_create_text_with_instructions(server):
    r = await server.client.responses.create(
        model=MODEL, input="Hello there", instructions="Be brief.", max_output_tokens=8
    )
    assert r.object == "response" and r.id.startswith("resp_") and r.model == MODEL
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    (message,) = r.output
    assert message.type == "message" and message.role == "assistant" and r.output_text
    assert r.usage.output_tokens == 8
    assert r.usage.input_tokens == tokens(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    )
    assert r.instructions == "Be brief." and r.store is True


async def test_previous_response_id_continues_the_conversation_without_old_instructions(server):
    first = await server.client.responses.create(
        model=MODEL, input="One", instructions="Old rules.", max_output_tokens=4
    )
    second = await server.client.responses.create(
        model=MODEL, input="Two", previous_response_id=first.id, instructions="New rules.", max_output_tokens=4
    )
    expected = [
        {"role": "system", "content": "New rules."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "Two"},
    ]
    assert second.usage.input_tokens == tokens(expected)
    assert second.previous_response_id == first.id
    third = await server.client.responses.create(
        model=MODEL, input="Three", previous_response_id=second.id, max_output_tokens=4
    )
    assert third.usage.input_tokens == tokens(
        [*expected[1:], {"role": "assistant", "content": second.output_text}, {"role": "user", "content": "Three"}]
    )


async def test_get_delete_and_store_false(server):
    r = await server.client.responses.create(model=MODEL, input="keep me", max_output_tokens=3)
    got = await server.client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage
    await server.client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        await server.client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await server.client.responses.delete(r.id)
    unstored = await server.client.responses.create(model=MODEL, input="forget me", max_output_tokens=3, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        await server.client.responses.retrieve(unstored.id)
    with pytest.raises(openai.NotFoundError) as exc:
        await server.client.responses.create(model=MODEL, input="x", previous_response_id=unstored.id)
    assert exc.value.body["param"] == "previous_response_id"


async def test_another_key_cannot_read_or_continue_a_response(server):
    r = await server.client.responses.create(model=MODEL, input="mine", max_output_tokens=3)
    other = openai.AsyncOpenAI(base_url="http://test/v1", api_key=KEYS[1], http_client=server.http, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.create(model=MODEL, input="x", previous_response_id=r.id)
    with pytest.raises(openai.NotFoundError):
        await other.responses.delete(r.id)
    assert (await server.client.responses.retrieve(r.id)).id == r.id


async def test_stream_events_in_order_and_the_stored_response_is_the_last_event(server):
    stream = await server.client.responses.create(model=MODEL, input="Hello", max_output_tokens=6, stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert kinds[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == 6
    stored = await server.client.responses.retrieve(final.id)
    assert stored.output_text == text and stored.status == "incomplete"


async def test_function_tools_whole_streamed_and_their_outputs_as_input(server):
    r = await server.client.responses.create(
        model=MODEL, input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
    )
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and r.status == "completed"
    assert json.loads(call.arguments) == {"city": "Paris"}
    stream = await server.client.responses.create(model=MODEL, input="Weather?", tools=[WEATHER], stream=True)
    events = [e async for e in stream]
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert json.loads(done.arguments) == {"city": "Paris"} and done.name == "get_weather"
    # the agent loop: the call's output goes back as an input item, after the response it answers
    follow = await server.client.responses.create(
        model=MODEL,
        previous_response_id=r.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 21}'}],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=5,
    )
    assert follow.output_text
    rendered = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ]},
        {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": call.call_id},
    ]  # fmt: skip
    assert follow.usage.input_tokens == tokens(rendered)


async def test_replayed_items_and_json_schema_format(server):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = await server.client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Answer in JSON."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ok?"}]},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "yes", "annotations": []}],
            },
            {"role": "user", "content": "again"},
        ],
        text={"format": {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}},
    )
    assert json.loads(r.output_text) == {"ok": True}
    assert r.text.format.type == "json_schema"


BAD = [
    ({"background": True}, 400, "background"),
    ({"include": ["message.output_text.logprobs"]}, 400, "include"),
    ({"truncation": "auto"}, 400, "truncation"),
    ({"reasoning": {"effort": "high"}}, 400, "reasoning"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format"),
    ({"input": []}, 400, "input"),
    ({"input": [{"type": "image", "url": "x"}]}, 400, "input.0"),
    ({"tools": [{"type": "web_search"}]}, 400, "tools.0.type"),
    ({"previous_response_id": "resp_nope"}, 404, "previous_response_id"),
    ({"frobnicate": 1}, 400, "frobnicate"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, 400, "input.0.call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400, "input.0.content.0"),
    ({"top_logprobs": 3}, 400, "top_logprobs"),
    ({"tools": [{**WEATHER, "parameters": {"type": "object", "minProperties": -1}}]}, 400, "tools.0.parameters"),
    ({"tools": [WEATHER, WEATHER]}, 400, "tools.1.name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, 400, "tool_choice.name"),
    (
        {"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "string", "pattern": "("}}}},
        400,
        "text.format.schema",
    ),
]


@pytest.mark.parametrize("extra,status,param", BAD, ids=[str(b[2]) for b in BAD])
async def test_bad_requests_name_the_parameter(server, extra, status, param):
    r = await server.http.post(
        "/v1/responses",
        json={"model": MODEL, "input": "hi", "max_output_tokens": 2, **extra},
        headers={"authorization": f"Bearer {KEYS[0]}"},
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param, r.json()
