"""How a validated request becomes the engine's GenerationParams (`generation_params`)."""

from __future__ import annotations

import pytest

from serving.api.openai_serving import generation_params
from serving.engine.base import GenerationParams
from tests.unit.request_factories import chat, completion

# -- generation_params -------------------------------------------------------------------------


def test_generation_params_defaults_chat():
    p = generation_params(chat())
    assert p == GenerationParams(
        max_tokens=None,
        temperature=1.0,
        top_p=1.0,
        top_k=None,
        n=1,
        stop=None,
        seed=None,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        logprobs=None,
        ignore_eos=False,
        min_tokens=0,
        json_schema=None,
        json_object=False,
    )


def test_generation_params_defaults_completion():
    p = generation_params(completion())
    assert p.temperature == 1.0
    assert p.top_p == 1.0
    assert p.logprobs is None
    assert p.json_schema is None and p.json_object is False
    assert p.max_tokens is None


def test_generation_params_copies_fields():
    p = generation_params(
        chat(
            temperature=0,
            top_p=0.5,
            top_k=7,
            n=3,
            stop="END",
            seed=42,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            ignore_eos=True,
            min_tokens=2,
            max_tokens=9,
        )
    )
    assert p.temperature == 0.0  # an explicit 0 is kept, not replaced by the default
    assert p.top_p == 0.5
    assert p.top_k == 7
    assert p.n == 3
    assert p.stop == ["END"]
    assert p.seed == 42
    assert p.presence_penalty == 0.5
    assert p.frequency_penalty == -0.5
    assert p.ignore_eos is True
    assert p.min_tokens == 2
    assert p.max_tokens == 9


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, None),
        ({"max_tokens": 7}, 7),
        ({"max_completion_tokens": 11}, 11),
        ({"max_tokens": 7, "max_completion_tokens": 11}, 11),
    ],
)
def test_max_completion_tokens_preferred(fields, expected):
    assert generation_params(chat(**fields)).max_tokens == expected


def test_completion_max_tokens():
    assert generation_params(completion(max_tokens=3)).max_tokens == 3


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, None),
        ({"logprobs": False}, None),
        ({"logprobs": True}, 0),
        ({"logprobs": True, "top_logprobs": 0}, 0),
        ({"logprobs": True, "top_logprobs": 5}, 5),
        ({"logprobs": True, "top_logprobs": 20}, 20),
    ],
)
def test_chat_logprobs_mapping(fields, expected):
    assert generation_params(chat(**fields)).logprobs == expected


@pytest.mark.parametrize("logprobs", [None, 0, 1, 5])
def test_completion_logprobs_mapping(logprobs):
    assert generation_params(completion(logprobs=logprobs)).logprobs == logprobs


def test_json_schema_mapping():
    schema = {"type": "object", "properties": {"x": {"type": "string"}}}
    p = generation_params(chat(response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}))
    assert p.json_schema == schema
    assert p.json_object is False


def test_json_object_mapping():
    p = generation_params(chat(response_format={"type": "json_object"}))
    assert p.json_object is True
    assert p.json_schema is None


def test_text_format_mapping():
    p = generation_params(chat(response_format={"type": "text"}))
    assert p.json_object is False
    assert p.json_schema is None
