"""The OpenAI API end to end: `serve run configs/dev.yaml`, the real vLLM CPU engine, the official SDK.

Tests taking `any_client` run twice: through the direct ingress and
through Ray Serve's proxy -> ingress deployment -> LLM deployment.
"""

import json
import re

import httpx
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from loadtests import sse
from serving.models.tiny_llama import model_dir
from tests.e2e.conftest import AUTH, DIRECT_URL

MODEL = "tiny-llama"
NO_EOS = {"ignore_eos": True}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(model_dir())


def chat_prompt_tokens(tokenizer, messages):
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return len(ids if isinstance(ids, list) else ids["input_ids"])


def test_health_and_readiness(dev_server):
    assert httpx.get(f"{DIRECT_URL}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{DIRECT_URL}/ready")
    assert ready.status_code == 200 and ready.json()["models"] == {MODEL: True}


def test_models(any_client):
    models = any_client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert any_client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        any_client.models.retrieve("no-such-model")


def test_chat_usage_matches_tokens(any_client, tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    r = any_client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0.7,
        user="u1",
        presence_penalty=0.5,
        frequency_penalty=0.5,
        extra_body=NO_EOS,
    )
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant" and isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == chat_prompt_tokens(tokenizer, messages)
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_max_completion_tokens(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_completion_tokens=5, extra_body=NO_EOS
    )
    assert r.usage.completion_tokens == 5


def test_chat_stream_with_usage(any_client, tokenizer):
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    stream = any_client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
    )
    chunks = list(stream)
    content_chunks = [c for c in chunks if c.choices]
    assert content_chunks[0].choices[0].delta.role == "assistant"
    assert content_chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in content_chunks)
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 16
    assert usage.prompt_tokens == chat_prompt_tokens(tokenizer, messages)
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert len(text) > 0


def test_stream_sse_framing(dev_server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True, **NO_EOS}
    with httpx.stream("POST", f"{DIRECT_URL}/v1/chat/completions", json=body, headers=AUTH, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert re.fullmatch(r"(data: [^\n]+\n\n)+", raw), raw[:300]
    events = sse.parse(raw)
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])


def test_completions(any_client, tokenizer):
    prompt = "The quick brown fox"
    r = any_client.completions.create(model=MODEL, prompt=prompt, max_tokens=7, extra_body=NO_EOS)
    assert r.object == "text_completion"
    assert r.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"


def test_completions_stream(any_client):
    stream = any_client.completions.create(
        model=MODEL,
        prompt="Hello",
        max_tokens=9,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=NO_EOS,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage.completion_tokens == 9
    assert isinstance(text, str) and len(chunks) >= 2


def test_n_two_choices(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=6, temperature=1.0, extra_body=NO_EOS
    )
    assert sorted(c.index for c in r.choices) == [0, 1]
    assert r.usage.completion_tokens == 12
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=6, stream=True, extra_body=NO_EOS
    )
    finished = {c.index for chunk in stream for c in chunk.choices if c.finish_reason}
    assert finished == {0, 1}


def test_same_seed_same_text(any_client):
    kw = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story"}],
        max_tokens=24,
        temperature=0.9,
        extra_body=NO_EOS,
    )
    a = any_client.chat.completions.create(seed=42, **kw).choices[0].message.content
    b = any_client.chat.completions.create(seed=42, **kw).choices[0].message.content
    c = any_client.chat.completions.create(seed=7, **kw).choices[0].message.content
    assert a == b
    assert a != c


def test_stop_sequence_truncates(client):
    kw = dict(model=MODEL, prompt="Numbers: 0 1 2", max_tokens=40, temperature=1.0, seed=3, extra_body=NO_EOS)
    full = client.completions.create(**kw).choices[0].text
    assert len(full) > 12
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = client.completions.create(stop=[stop], **kw).choices[0]
    assert cut.text == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


def test_json_schema_output(any_client):
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
            "confident": {"type": "boolean"},
        },
        "required": ["answer", "confident"],
        "additionalProperties": False,
    }
    r = any_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Is the sea wide?"}],
        max_tokens=60,
        temperature=0.8,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}},
    )
    data = json.loads(r.choices[0].message.content)
    jsonschema.validate(data, schema)


def test_json_object_output_starts_an_object(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "JSON please"}],
        max_tokens=30,
        response_format={"type": "json_object"},
    )
    assert r.choices[0].message.content.lstrip().startswith("{")


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=5,
        logprobs=True,
        top_logprobs=3,
        extra_body=NO_EOS,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    assert "".join(t.token for t in content) != ""


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, logprobs=2, extra_body=NO_EOS)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.token_logprobs) == 4
    assert all(len(t) >= 1 for t in lp.top_logprobs)


# -- errors: the matching openai exception class, and the server keeps serving ---------


def test_unknown_model_is_404(any_client):
    with pytest.raises(openai.NotFoundError) as exc:
        any_client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.body["code"] == "model_not_found"


@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 0}, "n"),
        ({"max_tokens": -3}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"top_logprobs": 3}, None),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
            "response_format.json_schema.schema",
        ),
    ],
)
def test_invalid_parameters_are_400(any_client, kwargs, param):
    args = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **kwargs}
    with pytest.raises(openai.BadRequestError) as exc:
        any_client.chat.completions.create(**args)
    body = exc.value.body
    assert body["type"] == "invalid_request_error" and body["message"]
    if param:
        assert body["param"] == param


def test_prompt_longer_than_context_is_400(any_client):
    long_text = "one two three four five six seven eight nine ten " * 400  # > 2048 tokens
    with pytest.raises(openai.BadRequestError) as exc:
        any_client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=4)
    assert exc.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        any_client.completions.create(model=MODEL, prompt="hi", max_tokens=5000, stream=True)
    # and the server goes on serving
    assert any_client.completions.create(model=MODEL, prompt="hi", max_tokens=2).usage.completion_tokens >= 1


def test_unrecognized_argument_is_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"tempreature": 1}
        )
    assert "tempreature" in exc.value.body["message"]


def test_broken_json_is_400(dev_server):
    r = httpx.post(
        f"{DIRECT_URL}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json", **AUTH}
    )
    assert r.status_code == 400
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
