"""What one request may cost (serving/api/cost.py): clear 400s before the engine, in O(1) of what they prevent."""

from __future__ import annotations

from typing import Any

import pytest

from serving.api.cost import check_cost, validate_schema
from serving.config import LimitsConfig
from serving.errors import InvalidRequestError, PromptTooLongError
from tests.unit.request_factories import chat, completion

LIMITS = LimitsConfig()


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def refused(req, limits=LIMITS, max_model_len=2048, max_token_chars=None) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        check_cost(req, limits, max_model_len, max_token_chars)
    assert info.value.status_code == 400
    return info.value


def test_ordinary_requests_pass():
    for req in (
        chat(),
        chat(n=4, max_tokens=100, logprobs=True, top_logprobs=20),
        chat(n=16, max_tokens=100, logprobs=True, top_logprobs=5),
        completion(n=2, logprobs=5, max_tokens=50),
        chat(response_format=schema_format({"type": "object", "properties": {"a": {"type": "string"}}})),
    ):
        check_cost(req, LIMITS, 2048, 24)


def test_n_is_capped():
    err = refused(chat(n=17))
    assert err.param == "n" and "at most 16" in err.message


def test_logprobs_per_generated_token_are_capped():
    # 16 x 21 entries per engine step: the frontend fell behind and other streams stalled
    err = refused(chat(n=16, max_tokens=10, logprobs=True, top_logprobs=20))
    assert err.param == "top_logprobs" and "16 x 21 = 336 tokens per generated position" in err.message
    assert refused(completion(n=20, logprobs=5, max_tokens=10), limits=LimitsConfig(max_n=32)).param == "logprobs"


def test_logprob_entries_are_capped_counting_an_omitted_max_tokens_as_the_context():
    # the kind of request that built a 180 MB body on the loop
    err = refused(chat(n=4, max_tokens=3000, logprobs=True, top_logprobs=20), max_model_len=4096)
    assert err.param == "top_logprobs" and "4 x 3000 x 21 = 252000" in err.message
    err = refused(chat(n=4, logprobs=True, top_logprobs=20), max_model_len=4096)
    assert "4 x 4096 x 21" in err.message
    err = refused(completion(n=4, logprobs=5), limits=LimitsConfig(max_logprob_entries=1000))
    assert err.param == "logprobs"
    check_cost(chat(n=8, max_tokens=100, logprobs=True), LIMITS, 2048, None)  # 800 entries


def test_output_tokens_cap_when_configured():
    limits = LimitsConfig(max_output_tokens=4096)
    err = refused(chat(n=4, max_tokens=2000), limits=limits)
    assert err.param == "max_tokens" and "4 x 2000 = 8000" in err.message
    check_cost(chat(n=2, max_tokens=2000), limits, 2048, None)
    refused(chat(n=4), limits=limits, max_model_len=2048)  # omitted max_tokens: the context each


def test_schema_size_and_depth_are_capped_before_any_walk_of_it():
    big = {"anyOf": [{"const": f"value-{i:05d}"} for i in range(10_000)]}
    err = refused(chat(response_format=schema_format(big)))
    assert err.code == "schema_too_large" and err.param == "response_format.json_schema.schema"
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    assert refused(chat(response_format=schema_format(deep))).code == "schema_too_deep"


def test_prompt_that_cannot_fit_is_refused_without_tokenizing():
    # 24 characters per token at most: 60,000 characters are at least 2,500 tokens > 2048
    err = refused(chat(messages=[{"role": "user", "content": "x" * 60_000}]), max_token_chars=24)
    assert isinstance(err, PromptTooLongError) and err.code == "context_length_exceeded"
    assert err.param == "messages" and "at least 2500 tokens" in err.message
    assert refused(completion(prompt="x" * 60_000), max_token_chars=24).param == "prompt"
    check_cost(
        chat(messages=[{"role": "user", "content": "x" * 40_000}]), LIMITS, 2048, 24
    )  # may fit: the engine counts
    check_cost(chat(messages=[{"role": "user", "content": "x" * 60_000}]), LIMITS, 2048, None)  # no bound known


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "nonsense"}, "Invalid JSON schema"),
        ({"type": 5}, "Invalid JSON schema"),
        ({"type": "object", "properties": 5}, "Invalid JSON schema"),
        ({"type": "string", "pattern": "a{99999999999}"}, "repetition number is too large"),
        ({"type": "string", "pattern": "(unclosed"}, "Invalid JSON schema"),
    ],
)
def test_invalid_schemas_are_400s(schema, message):
    with pytest.raises(InvalidRequestError, match=message) as info:
        validate_schema(schema)
    assert info.value.param == "response_format.json_schema.schema"


def test_valid_schema():
    validate_schema({"type": "object", "properties": {"a": {"type": "string", "pattern": "^[a-z]+$"}}})
