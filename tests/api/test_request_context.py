"""RequestContext: every response of every route carries X-Request-Id; generation requests are counted once, by reason."""

from __future__ import annotations

import pytest

from serving.api.openai_serving import OpenAIServing
from serving.config import AuthConfig, LimitsConfig
from tests.inprocess import InProcessApp, simulated_engine

KEY = "sk-unit-test-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


class RecordingMetrics:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int, str | None]] = []
        self.generations = 0

    def request_done(self, model, route, status, reason=None, tenant=None):
        self.requests.append((model, route, status, reason))

    def generation_done(self, done):
        self.generations += 1

    def engine_stats(self, *args):
        pass


@pytest.fixture()
def app_and_metrics(monkeypatch):
    monkeypatch.setenv("SERVING_API_KEYS", KEY)
    engine = simulated_engine({"decode_s_per_token": 0.0, "max_model_len": 64})
    metrics = RecordingMetrics()
    serving = OpenAIServing(engine, "sim", 64, metrics=metrics)
    limits = LimitsConfig(max_body_bytes=2048, requests_per_minute=1000)
    with InProcessApp([serving], auth=AuthConfig(), limits=limits, metrics=metrics).test_client() as client:
        client.portal.call(engine.start)
        yield client, metrics


@pytest.mark.parametrize(
    "method, path, headers, body, status",
    [
        ("GET", "/health", {}, None, 200),
        ("GET", "/ready", {}, None, 200),
        ("GET", "/stats", AUTH, None, 200),
        ("GET", "/stats", {}, None, 401),
        ("GET", "/v1/models", AUTH, None, 200),
        ("GET", "/v1/models", {}, None, 401),
        ("GET", "/v1/models/sim", AUTH, None, 200),
        ("GET", "/v1/models/nope", AUTH, None, 404),
        ("GET", "/no/such/route", {}, None, 404),
        ("GET", "/v1/chat/completions", AUTH, None, 405),
        ("POST", "/v1/chat/completions", AUTH, CHAT, 200),
        ("POST", "/v1/chat/completions", {}, CHAT, 401),
        ("POST", "/v1/chat/completions", AUTH, {**CHAT, "model": "nope"}, 404),
        ("POST", "/v1/completions", AUTH, {"model": "sim", "prompt": "x" * 4000}, 413),
        ("POST", "/v1/completions", AUTH, {"model": "sim", "prompt": "hi", "max_tokens": 2}, 200),
    ],
)
def test_every_response_carries_a_request_id(app_and_metrics, method, path, headers, body, status):
    client, _ = app_and_metrics
    response = client.request(method, path, headers=headers, json=body)
    assert response.status_code == status, response.text
    rid = response.headers.get("x-request-id")
    assert rid and len(rid) == 32, response.headers
    if status >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_a_valid_client_request_id_is_echoed_and_an_invalid_one_replaced(app_and_metrics):
    client, _ = app_and_metrics
    ok = client.get("/v1/models", headers={**AUTH, "X-Request-Id": "trace-42:a.b"})
    assert ok.headers["x-request-id"] == "trace-42:a.b"
    bad = client.get("/v1/models", headers={**AUTH, "X-Request-Id": "bad id with spaces"})
    assert bad.headers["x-request-id"] != "bad id with spaces" and len(bad.headers["x-request-id"]) == 32


def test_a_streamed_response_carries_the_request_id(app_and_metrics):
    client, _ = app_and_metrics
    with client.stream("POST", "/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        assert response.headers["x-request-id"]
        assert "data: [DONE]" in "".join(response.iter_text())


def test_generation_requests_are_counted_once_with_the_error_reason(app_and_metrics):
    client, metrics = app_and_metrics
    client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
    client.post("/v1/chat/completions", json=CHAT)
    client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "model": "nope"})
    client.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "bogus": 1})
    client.post("/v1/completions", headers=AUTH, json={"model": "sim", "prompt": "x" * 4000})
    client.get("/v1/models", headers=AUTH)  # not a generation route: not counted
    assert metrics.requests == [
        ("sim", "/v1/chat/completions", 200, None),
        ("-", "/v1/chat/completions", 401, "auth"),
        ("-", "/v1/chat/completions", 404, "model_not_found"),
        ("-", "/v1/chat/completions", 400, "invalid_request"),
        ("-", "/v1/completions", 413, "body_too_large"),
    ]
    assert metrics.generations == 1


def test_an_unexpected_error_is_a_generic_500_with_a_request_id(app_and_metrics, monkeypatch):
    client, metrics = app_and_metrics
    serving = client.app.state.registry.get("sim")

    async def boom(req, request_id):
        raise RuntimeError("SECRET internal detail")

    monkeypatch.setattr(serving, "chat", boom)
    response = client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
    assert response.status_code == 500
    assert "SECRET" not in response.text
    assert response.json()["error"]["type"] == "server_error"
    assert response.headers["x-request-id"]
    assert metrics.requests[-1] == ("sim", "/v1/chat/completions", 500, "server_error")
