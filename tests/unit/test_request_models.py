"""The OpenAI request models: what they accept, what they refuse and with which message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from tests.unit.request_factories import chat, completion

# -- valid requests ---------------------------------------------------------------------


def test_minimal_chat_request():
    req = chat()
    assert req.model == "m"
    assert req.n == 1
    assert req.stream is False
    assert req.messages[0].text() == "hi"
    assert req.include_usage is False
    assert req.requested_max_tokens is None


def test_full_chat_request():
    req = chat(
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "q", "name": "alice"},
            {"role": "assistant", "content": None},
            {"role": "user", "content": "q2"},
        ],
        max_tokens=10,
        max_completion_tokens=20,
        temperature=0,
        top_p=1,
        n=128,
        stop=["a", "b", "c", "d"],
        seed=-1,
        presence_penalty=-2,
        frequency_penalty=2,
        stream=True,
        stream_options={"include_usage": True},
        user="u",
        ignore_eos=True,
        top_k=-1,
        min_tokens=3,
        logprobs=True,
        top_logprobs=20,
        response_format={"type": "json_object"},
    )
    assert req.messages[1].text() == "ab"
    assert req.messages[3].text() == ""
    assert req.include_usage is True
    assert req.requested_max_tokens == 20
    assert req.stop == ["a", "b", "c", "d"]


def test_stop_string_becomes_list():
    assert chat(stop="x").stop == ["x"]
    assert completion(stop="x").stop == ["x"]


@pytest.mark.parametrize("prompt", ["hi", "", ["hi"], [1, 2, 3]])
def test_valid_completion_prompts(prompt):
    assert completion(prompt=prompt).prompt == prompt


def test_full_completion_request():
    req = completion(max_tokens=5, logprobs=5, stream=True, stream_options={"include_usage": False}, echo=False)
    assert req.requested_max_tokens == 5
    assert req.logprobs == 5
    assert req.include_usage is False


def test_json_schema_response_format():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    req = chat(
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    )
    assert req.response_format.json_schema.schema_ == schema


# -- invalid requests --------------------------------------------------------------------

INVALID_CHAT = {
    "temperature 2.5": {"temperature": 2.5},
    "temperature negative": {"temperature": -0.1},
    "temperature NaN": {"temperature": float("nan")},
    "top_p 0": {"top_p": 0},
    "top_p 1.5": {"top_p": 1.5},
    "n 0": {"n": 0},
    "n 129": {"n": 129},
    "max_tokens 0": {"max_tokens": 0},
    "max_completion_tokens 0": {"max_completion_tokens": 0},
    "5 stop sequences": {"stop": ["a", "b", "c", "d", "e"]},
    "empty stop string": {"stop": ""},
    "empty stop in list": {"stop": ["a", ""]},
    "presence_penalty 3": {"presence_penalty": 3},
    "frequency_penalty -3": {"frequency_penalty": -3},
    "empty messages": {"messages": []},
    "unknown role": {"messages": [{"role": "tool", "content": "x"}]},
    "missing content for user": {"messages": [{"role": "user"}]},
    "null content for system": {"messages": [{"role": "system", "content": None}]},
    "unknown content part": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
    "unknown message field": {"messages": [{"role": "user", "content": "x", "extra": 1}]},
    "top_logprobs without logprobs": {"top_logprobs": 2},
    "top_logprobs 21": {"logprobs": True, "top_logprobs": 21},
    "top_logprobs negative": {"logprobs": True, "top_logprobs": -1},
    "unknown field": {"frobnicate": True},
    "stream_options without stream": {"stream_options": {"include_usage": True}},
    "unknown stream_options field": {"stream": True, "stream_options": {"include_usage": True, "x": 1}},
    "json_schema without json_schema": {"response_format": {"type": "json_schema"}},
    "unknown response_format type": {"response_format": {"type": "yaml"}},
    "bad json_schema name": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}
    },
    "empty model": {"model": ""},
    "min_tokens negative": {"min_tokens": -1},
    "top_k -2": {"top_k": -2},
}


@pytest.mark.parametrize("fields", INVALID_CHAT.values(), ids=INVALID_CHAT.keys())
def test_invalid_chat_request(fields):
    with pytest.raises(ValidationError):
        chat(**fields)


INVALID_COMPLETION = {
    "temperature 2.5": {"temperature": 2.5},
    "top_p 0": {"top_p": 0},
    "n 0": {"n": 0},
    "n 129": {"n": 129},
    "max_tokens 0": {"max_tokens": 0},
    "5 stop sequences": {"stop": ["a", "b", "c", "d", "e"]},
    "empty stop string": {"stop": ""},
    "batched string prompts": {"prompt": ["a", "b"]},
    "batched token prompts": {"prompt": [[1, 2], [3]]},
    "empty prompt list": {"prompt": []},
    "echo": {"echo": True},
    "logprobs 6": {"logprobs": 6},
    "unknown field": {"suffix": "x"},
    "stream_options without stream": {"stream_options": {"include_usage": True}},
    "response_format is chat-only": {"response_format": {"type": "json_object"}},
}


@pytest.mark.parametrize("fields", INVALID_COMPLETION.values(), ids=INVALID_COMPLETION.keys())
def test_invalid_completion_request(fields):
    with pytest.raises(ValidationError):
        completion(**fields)


def test_missing_model_and_prompt():
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"prompt": "x"})
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m"})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m"})


@pytest.mark.parametrize(
    "fields, text",
    [
        ({"stop": ["a"] * 5}, "at most 4 stop sequences"),
        ({"stop": [""]}, "stop sequences must not be empty"),
        ({"top_logprobs": 1}, "top_logprobs requires logprobs to be true"),
        ({"stream_options": {"include_usage": True}}, "stream_options is only allowed when stream is true"),
        ({"response_format": {"type": "json_schema"}}, "needs 'json_schema'"),
        ({"messages": [{"role": "user"}]}, "a 'user' message needs content"),
    ],
)
def test_invalid_chat_messages(fields, text):
    with pytest.raises(ValidationError, match=text):
        chat(**fields)


def test_invalid_completion_messages():
    with pytest.raises(ValidationError, match="batched prompts are not supported"):
        completion(prompt=["a", "b"])
    with pytest.raises(ValidationError, match="echo is not supported"):
        completion(echo=True)
