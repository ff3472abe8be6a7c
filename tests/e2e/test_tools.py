"""Tool calling end to end: configs/dev.yaml, the real vLLM engine, the official SDK and LangChain.

The tiny model's weights are random, so what it says is noise; what is real is
the path: the tools rendered by its chat template, a forced call (`required`,
a named function) held to the tools' schemas by vLLM's structured output, the
call read back and streamed as OpenAI's deltas, the history (the assistant's
calls and the tool results) rendered again on the next turn, and `auto` going
through vLLM's `hermes` parser. Parameters are enums and booleans so the
random model's constrained output ends by itself.

Tests taking `any_client` run through the direct ingress and Serve's proxy.
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from transformers import AutoTokenizer

from serving.models.tiny_llama import model_dir
from tests.e2e.conftest import API_KEY, DIRECT_URL

MODEL = "tiny-llama"
PARAMS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Oslo", "Lima"]},
        "unit": {"type": "string", "enum": ["c", "f"]},
        "detailed": {"type": "boolean"},
    },
    "required": ["city", "unit", "detailed"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": PARAMS}}
CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(model_dir())


def prompt_tokens(tokenizer, messages, tools=None) -> int:
    ids = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, add_generation_prompt=True)
    return len(ids if isinstance(ids, list) else ids["input_ids"])


def check_call(name: str, arguments: str) -> None:
    jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_required_call_is_valid_for_its_schema(any_client, tokenizer):
    r = any_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", parallel_tool_calls=False,
        max_tokens=100, temperature=1.0, seed=3,
    )  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    check_call(call.function.name, call.function.arguments)
    # the tools were rendered into the prompt by the model's template
    assert r.usage.prompt_tokens == prompt_tokens(tokenizer, ASK, [WEATHER, CLOCK])


def test_parallel_calls_each_valid(client):
    for seed in range(4):
        r = client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=200, seed=seed
        )
        choice = r.choices[0]
        if choice.finish_reason == "length":
            continue  # the random model kept adding calls until max_tokens
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
        for call in choice.message.tool_calls:
            check_call(call.function.name, call.function.arguments)


def test_named_call_streams_in_pieces(any_client):
    stream = any_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[CLOCK, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=100, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    deltas, finish, usage = [], [], None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert finish == ["tool_calls"]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert all(d.id is None and d.index == 0 for d in deltas[1:])
    assert len(deltas) > 3, "the arguments come as the engine writes them"
    check_call("get_weather", "".join(d.function.arguments or "" for d in deltas))
    assert usage is not None and usage.completion_tokens > 0


def test_auto_goes_through_the_models_parser(any_client, tokenizer):
    """`auto` with the hermes parser: the random model writes no <tool_call>, so the answer is its text."""
    r = any_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], max_tokens=12, extra_body={"ignore_eos": True}
    )
    choice = r.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == prompt_tokens(tokenizer, ASK, [WEATHER])
    stream = any_client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="auto", max_tokens=12, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text


def test_multi_turn_tool_loop_renders_the_history(client, tokenizer):
    """Turn 1 forces a call; the SDK's dump of the answer and the tool's result go back; turn 2 answers."""
    messages: list[dict] = [{"role": "system", "content": "You check the weather."}, *ASK]
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER], tool_choice="required", parallel_tool_calls=False,
        max_tokens=100,
    )  # fmt: skip
    assistant = first.choices[0].message
    messages.append(assistant.model_dump())
    (call,) = assistant.tool_calls
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})})
    second = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=6,
        extra_body={"ignore_eos": True},
    )
    assert second.choices[0].message.content and second.choices[0].finish_reason == "length"
    # exactly what the template makes of the history (with `none`, the tools are not offered)
    rendered = [
        {"role": "system", "content": "You check the weather."},
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": json.loads(call.function.arguments)}}
        ]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})},
    ]  # fmt: skip
    assert second.usage.prompt_tokens == prompt_tokens(tokenizer, rendered)
    text = tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=True)
    assert "<tool_response>" in text and '"name": "get_weather"' in text


# -- LangChain: the client agent frameworks use ----------------------------------------------------


def get_weather(city: str, unit: str, detailed: bool) -> str:
    """Weather now."""
    return json.dumps({"city": city, "temp": 21, "unit": unit})


@pytest.fixture(scope="module")
def chat_model(dev_server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=MODEL, base_url=f"{DIRECT_URL}/v1", api_key=API_KEY, max_retries=0, timeout=60, max_tokens=100
    )


def weather_tool():
    from langchain_core.tools import StructuredTool

    return StructuredTool.from_function(get_weather, args_schema=PARAMS, name="get_weather", description="Weather now")


def test_langchain_bind_tools_round_trip_and_agent_loop(chat_model):
    from langchain_core.messages import HumanMessage, ToolMessage

    tool = weather_tool()
    forced = chat_model.bind_tools([tool], tool_choice="get_weather")
    history = [HumanMessage("What is the weather in Paris?")]
    ai = forced.invoke(history)
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and call["id"]
    jsonschema.validate(call["args"], PARAMS)
    # the agent loop: run the tool, send its result back, let the model answer (auto: the hermes parser)
    history += [ai, ToolMessage(tool.invoke(call["args"]), tool_call_id=call["id"])]
    answer = chat_model.bind_tools([tool]).invoke(history)
    assert isinstance(answer.content, str) and answer.response_metadata["finish_reason"] in (
        "stop",
        "length",
        "tool_calls",
    )
    # streamed, the calls assemble from chunks
    chunks = list(chat_model.bind_tools([tool], tool_choice="required").stream(history[:1]))
    merged = chunks[0]
    for c in chunks[1:]:
        merged += c
    assert merged.tool_calls and merged.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(merged.tool_calls[0]["args"], PARAMS)


def test_langchain_structured_output_by_function_calling(chat_model):
    from typing import Literal

    from pydantic import BaseModel

    class Weather(BaseModel):
        """Weather now."""

        city: Literal["Paris", "Oslo"]
        detailed: bool

    # function calling: a named tool_choice, the model's schema enforced by structured output
    result = chat_model.with_structured_output(Weather, method="function_calling").invoke("Weather in Paris?")
    assert isinstance(result, Weather)


# -- /tokenize and /detokenize: the model's own tokenizer ------------------------------------------


@pytest.mark.parametrize("path", ["direct", "proxy"])
def test_tokenize_counts_what_generation_counts(dev_server, tokenizer, path):
    import httpx

    from tests.e2e.conftest import AUTH, PROXY_URL

    base = DIRECT_URL if path == "direct" else PROXY_URL
    with httpx.Client(base_url=base, headers=AUTH, timeout=60) as http:
        r = http.post("/tokenize", json={"model": MODEL, "messages": ASK, "tools": [WEATHER]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == prompt_tokens(tokenizer, ASK, [WEATHER]) == len(body["tokens"])
        assert body["max_model_len"] == 2048
        text = "The quick brown fox."
        r = http.post("/tokenize", json={"model": MODEL, "prompt": text, "add_special_tokens": False})
        ids = r.json()["tokens"]
        assert ids == tokenizer.encode(text, add_special_tokens=False)
        assert http.post("/detokenize", json={"model": MODEL, "tokens": ids}).json() == {"prompt": text}
        r = http.post("/detokenize", json={"model": MODEL, "tokens": [len(tokenizer) + 5]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
