"""Body parsing and the error envelope over HTTP: the real app on dummy backends (no engine, no Ray)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serving.api.protocol import ChatCompletionRequest, CompletionRequest
from serving.errors import InvalidRequestError
from tests.inprocess import InProcessApp

USER = [{"role": "user", "content": "hi"}]

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

    async def context_length(self) -> int | None:
        return None


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
    # Unhandled exceptions show as the 500 the client gets (Starlette would re-raise them in the test).
    with InProcessApp(list(backends.values())).test_client() as c:
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
    err = assert_openai_error(client.post(CHAT, json={"model": "ok", "messages": USER, "temperature": 2.5}), 400)
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
    err = assert_openai_error(client.post(CHAT, json={"model": "ok", "messages": USER, "top_logprobs": 3}), 400)
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
    with InProcessApp([]).test_client() as c:
        assert c.get("/v1/models").json() == {"object": "list", "data": []}
        err = assert_openai_error(c.post(CHAT, json={"model": "any", "messages": USER}), 404)
        assert err["code"] == "model_not_found"
        # Body errors come before the model lookup.
        assert_openai_error(c.post(CHAT, content=b"{", headers=JSON), 400)
