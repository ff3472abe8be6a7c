"""OpenAI request models, their mapping to engine parameters, and body parsing over HTTP.

The HTTP part runs the real FastAPI app from `serving.api.app.build_api` with a
dummy in-process backend: no Ray, no engine.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.api.app import build_api
from serving.api.backend import ModelRegistry
from serving.errors import InvalidRequestError
from serving.api.openai_serving import OpenAIServing, generation_params
from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from serving.engine.base import (
    ChoiceDelta,
    Engine,
    EngineInfo,
    EngineOutput,
    GenerationParams,
    TokenLogprob,
)

USER = [{"role": "user", "content": "hi"}]


def chat(**kw: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **kw})


def completion(**kw: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **kw})


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
    req = chat(response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}})
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
    "invalid JSON schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}
    },
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
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
            "invalid JSON schema",
        ),
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


# -- parse_body over HTTP -------------------------------------------------------------------------

ERROR_KEYS = {"message", "type", "param", "code"}
GENERIC_500 = "The server had an error while processing your request."


class DummyBackend:
    """A `ModelBackend` that answers at once, or raises `fail`."""

    def __init__(self, model_id: str, fail: BaseException | None = None) -> None:
        self.model_id = model_id
        self.fail = fail
        self.seen: list[Any] = []

    async def chat(self, req, request_id):
        self.seen.append(req)
        if self.fail is not None:
            raise self.fail
        if req.stream:

            async def gen():
                yield b'data: {"x":1}\n\n'
                yield b"data: [DONE]\n\n"

            return gen()
        return {"object": "chat.completion", "model": req.model, "choices": []}

    async def completions(self, req, request_id):
        result = await self.chat(req, request_id)
        return {**result, "object": "text_completion"} if isinstance(result, dict) else result

    async def ready(self) -> bool:
        return self.fail is None

    async def stats(self) -> dict[str, float]:
        return {}


SECRET = "SECRET-internal-detail-db-password"


@pytest.fixture(scope="module")
def backends():
    return {
        "ok": DummyBackend("ok"),
        "boom": DummyBackend("boom", RuntimeError(SECRET)),
        "bad": DummyBackend("bad", InvalidRequestError("nope", param="messages", code="custom")),
    }


@pytest.fixture(scope="module")
def client(backends):
    app = build_api(ModelRegistry(list(backends.values()), created=123))
    # Starlette re-raises unhandled exceptions after the 500 is sent; look at the response instead.
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def assert_openai_error(resp, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ERROR_KEYS
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
JSON = {"content-type": "application/json"}


def test_valid_chat_request_reaches_backend(client, backends):
    resp = client.post(CHAT, json={"model": "ok", "messages": USER, "max_tokens": 3})
    assert resp.status_code == 200
    assert resp.json()["object"] == "chat.completion"
    assert isinstance(backends["ok"].seen[-1], ChatCompletionRequest)
    assert backends["ok"].seen[-1].max_tokens == 3


def test_valid_completion_request_reaches_backend(client, backends):
    resp = client.post(COMPLETIONS, json={"model": "ok", "prompt": "x"})
    assert resp.status_code == 200
    assert resp.json()["object"] == "text_completion"
    assert isinstance(backends["ok"].seen[-1], CompletionRequest)


def test_streaming_request_is_sse(client):
    resp = client.post(CHAT, json={"model": "ok", "messages": USER, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.text == 'data: {"x":1}\n\ndata: [DONE]\n\n'


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/json", None])
def test_json_content_types_accepted(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    body = json.dumps({"model": "ok", "messages": USER}).encode()
    resp = client.post(CHAT, content=body, headers=headers)
    assert resp.status_code == 200, resp.text


def test_content_type_is_case_insensitive(client):
    """Media types are case-insensitive (RFC 9110 section 8.3.1)."""
    body = json.dumps({"model": "ok", "messages": USER}).encode()
    resp = client.post(CHAT, content=body, headers={"content-type": "Application/JSON"})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("body", [b'{"model": "ok", ', b"", b"not json", b"{'model': 'ok'}"])
def test_broken_json(client, path, body):
    err = assert_openai_error(client.post(path, content=body, headers=JSON), 400)
    assert err["type"] == "invalid_request_error"
    assert "not valid JSON" in err["message"]


@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_non_object_json(client, body):
    err = assert_openai_error(client.post(CHAT, content=body, headers=JSON), 400)
    assert err["type"] == "invalid_request_error"
    assert "must be a JSON object" in err["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type(client, content_type):
    body = json.dumps({"model": "ok", "messages": USER}).encode()
    err = assert_openai_error(client.post(CHAT, content=body, headers={"content-type": content_type}), 415)
    assert err["type"] == "invalid_request_error"
    assert content_type in err["message"]


def test_invalid_utf8(client):
    body = b'{"model": "ok", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'
    err = assert_openai_error(client.post(CHAT, content=body, headers=JSON), 400)
    assert err["type"] == "invalid_request_error"
    assert "UTF-8" in err["message"]


def test_validation_error_names_param(client):
    err = assert_openai_error(
        client.post(CHAT, json={"model": "ok", "messages": USER, "temperature": 2.5}), 400
    )
    assert err["param"] == "temperature"
    assert err["code"] == "invalid_value"
    assert "temperature" in err["message"]


def test_unknown_field_is_400(client):
    err = assert_openai_error(client.post(CHAT, json={"model": "ok", "messages": USER, "frobnicate": 1}), 400)
    assert err["param"] == "frobnicate"
    assert err["message"] == "Unrecognized request argument supplied: frobnicate"


def test_missing_required_parameter(client):
    err = assert_openai_error(client.post(CHAT, json={"messages": USER}), 400)
    assert err["param"] == "model"
    assert err["code"] == "missing_required_parameter"


def test_nested_param_path(client):
    err = assert_openai_error(
        client.post(CHAT, json={"model": "ok", "messages": [{"role": "tool", "content": "x"}]}), 400
    )
    assert err["param"] is not None and err["param"].startswith("messages.0")


def test_model_level_rule_message(client):
    err = assert_openai_error(
        client.post(CHAT, json={"model": "ok", "messages": USER, "top_logprobs": 3}), 400
    )
    assert "top_logprobs requires logprobs to be true" in err["message"]


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_unknown_model_is_404(client, path):
    body = {"model": "nope", "messages": USER} if path == CHAT else {"model": "nope", "prompt": "x"}
    err = assert_openai_error(client.post(path, json=body), 404)
    assert err["code"] == "model_not_found"
    assert err["param"] == "model"
    assert "nope" in err["message"]


def test_unknown_model_card_is_404(client):
    err = assert_openai_error(client.get("/v1/models/nope"), 404)
    assert err["code"] == "model_not_found"


def test_models_list(client):
    resp = client.get("/v1/models")
    assert resp.status_code == 200
    assert [m["id"] for m in resp.json()["data"]] == ["ok", "boom", "bad"]


@pytest.mark.parametrize("stream", [False, True])
def test_unexpected_backend_exception_is_generic_500(client, stream):
    resp = client.post(CHAT, json={"model": "boom", "messages": USER, "stream": stream})
    err = assert_openai_error(resp, 500)
    assert err["message"] == GENERIC_500
    assert err["type"] == "server_error"
    assert SECRET not in resp.text
    assert "Traceback" not in resp.text
    assert "RuntimeError" not in resp.text


def test_api_error_from_backend_keeps_status_and_fields(client):
    err = assert_openai_error(client.post(CHAT, json={"model": "bad", "messages": USER}), 400)
    assert err == {"message": "nope", "type": "invalid_request_error", "param": "messages", "code": "custom"}


def test_unknown_route_and_method_are_openai_errors(client):
    assert_openai_error(client.get("/v1/nothing-here"), 404)
    assert_openai_error(client.get(CHAT), 405)


def test_ready_reports_failing_backend(client):
    resp = client.get("/ready")
    assert resp.status_code == 503
    assert resp.json() == {"ready": False, "models": {"ok": True, "boom": False, "bad": False}}


def test_empty_registry():
    app = build_api(ModelRegistry([], created=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/v1/models").json() == {"object": "list", "data": []}
        err = assert_openai_error(c.post(CHAT, json={"model": "any", "messages": USER}), 404)
        assert err["code"] == "model_not_found"
        # Body errors come before the model lookup.
        assert_openai_error(c.post(CHAT, content=b"{", headers=JSON), 400)


# -- SSE framing through OpenAIServing with a scripted engine -------------------------------------


class ScriptedEngine(Engine):
    """Two choices, two steps; records the requests it receives."""

    def __init__(self) -> None:
        self.requests = []

    async def start(self):
        return EngineInfo(max_model_len=64)

    async def generate(self, request):
        self.requests.append(request)
        lp = [TokenLogprob("a", -0.5, [("a", -0.5), ("b", -1.0)])]
        yield EngineOutput(3, [ChoiceDelta(0, "He", 1, None, lp), ChoiceDelta(1, "Yo", 1, None, lp)])
        yield EngineOutput(3, [ChoiceDelta(0, "llo", 1, "stop", lp), ChoiceDelta(1, "!", 1, "length", lp)])

    async def check_health(self):
        return None

    async def shutdown(self):
        return None


@pytest.fixture()
def scripted():
    engine = ScriptedEngine()
    app = build_api(ModelRegistry([OpenAIServing(engine, "tiny", 64)], created=1))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield engine, c


def sse_events(text: str) -> list[Any]:
    assert text.endswith("data: [DONE]\n\n")
    frames = text.split("\n\n")
    assert frames[-1] == ""
    out = []
    for frame in frames[:-1]:
        assert frame.startswith("data: ")
        payload = frame.removeprefix("data: ")
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    assert out[-1] == "[DONE]" and "[DONE]" not in out[:-1]
    return out[:-1]


def test_chat_stream_framing(scripted):
    engine, c = scripted
    body = {
        "model": "tiny",
        "messages": USER,
        "n": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 1,
        "max_completion_tokens": 5,
        "max_tokens": 2,
    }
    resp = c.post(CHAT, json=body)
    assert resp.status_code == 200
    events = sse_events(resp.text)
    chunks, usage = events[:-1], events[-1]
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "tiny" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert all(e["usage"] is None for e in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "He"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "llo"}
    assert [c_["finish_reason"] for c_ in chunks[1]["choices"]] == ["stop", "length"]
    assert chunks[0]["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["token"] == "b"
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    params = engine.requests[-1].params
    assert params.max_tokens == 5 and params.n == 2 and params.logprobs == 1
    assert engine.requests[-1].messages == [{"role": "user", "content": "hi"}]


def test_completion_stream_without_usage(scripted):
    _, c = scripted
    resp = c.post(COMPLETIONS, json={"model": "tiny", "prompt": "hi", "n": 2, "stream": True})
    events = sse_events(resp.text)
    assert len(events) == 2
    assert all("usage" not in e for e in events)
    assert [ch["text"] for ch in events[0]["choices"]] == ["He", "Yo"]
    assert all(ch["logprobs"] is None for e in events for ch in e["choices"])


def test_chat_non_stream_collects(scripted):
    _, c = scripted
    resp = c.post(CHAT, json={"model": "tiny", "messages": USER, "n": 2})
    body = resp.json()
    assert [ch["message"]["content"] for ch in body["choices"]] == ["Hello", "Yo!"]
    assert [ch["finish_reason"] for ch in body["choices"]] == ["stop", "length"]
    assert body["usage"]["completion_tokens"] == 4
