"""Tenants through the real app on the simulated engine: scopes, shared budgets, fair queuing, usage labels.

What one process shows; the cluster-wide budgets across replicas and nodes are
tests/e2e/test_tenants.py's, the queue's rules in detail tests/unit/test_fair_queue.py's.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.config import AuthConfig, LimitsConfig, TenantConfig
from tests.inprocess import MODEL

KEYS = {
    "SERVING_TEST_TEAM_A": "sk-team-a-key-number-1,sk-team-a-key-number-2",
    "SERVING_TEST_TEAM_B": "sk-team-b-key-number-1",
    "SERVING_TEST_BATCH": "sk-batch-key-number-01",
    "SERVING_TEST_UNTENANTED": "sk-untenanted-key-0001",
}
A1, A2 = (f"Bearer sk-team-a-key-number-{i}" for i in (1, 2))
B = "Bearer sk-team-b-key-number-1"
BATCH = "Bearer sk-batch-key-number-01"
PLAIN = "Bearer sk-untenanted-key-0001"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
SLOW = {"ttft_base_s": 0.0, "prefill_s_per_token": 0.0, "decode_s_per_token": 0.02, "max_model_len": 512}


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


def auth(**team_a) -> AuthConfig:
    return AuthConfig(
        api_keys_env="SERVING_TEST_UNTENANTED",
        tenants=[
            TenantConfig(name="team-a", keys_env="SERVING_TEST_TEAM_A", **team_a),
            TenantConfig(name="team-b", keys_env="SERVING_TEST_TEAM_B", models=["other-model", "other-*"]),
            TenantConfig(name="batch", keys_env="SERVING_TEST_BATCH", priority="low"),
        ],
    )


class Recording:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int, str]] = []
        self.generations: list[tuple[str, int, int]] = []

    def request_done(self, model, route, status, reason=None, tenant="anonymous"):
        self.requests.append((model, status, tenant))

    def generation_done(self, done):
        self.generations.append((done.tenant, done.prompt_tokens, done.completion_tokens))

    def engine_stats(self, *args):
        pass


async def test_a_tenant_sees_and_uses_only_its_models(make_app):
    app = await make_app(auth=auth())
    r = await app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": B})
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and "do not have access" in err["message"]
    listed = await app.http.get("/v1/models", headers={"Authorization": B})
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert (await app.http.get(f"/v1/models/{MODEL}", headers={"Authorization": B})).status_code == 404
    # the same model for a tenant allowed it, and for a key of no tenant
    for key in (A1, PLAIN):
        assert (
            await app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": key})
        ).status_code == 200
        ids = [m["id"] for m in (await app.http.get("/v1/models", headers={"Authorization": key})).json()["data"]]
        assert ids == [MODEL]
    r = await app.http.post("/tokenize", json={"model": MODEL, "prompt": "hi"}, headers={"Authorization": B})
    assert r.status_code == 404


async def test_the_keys_of_a_tenant_share_its_budget(make_app):
    app = await make_app(auth=auth(requests_per_minute=2))
    app.app.state.budgets.use_clock(lambda: 1000.0)  # no refill during the test
    for key in (A1, A2):
        assert (
            await app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": key})
        ).status_code == 200
    r = await app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": A1})
    assert r.status_code == 429, r.text
    assert "requests per minute" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 1
    # another tenant and a key of no tenant have budgets of their own
    assert (await app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": BATCH})).status_code == 200


async def test_usage_is_labelled_by_tenant(make_app):
    metrics = Recording()
    app = await make_app(auth=auth(), metrics=metrics)
    for key in (A1, A2, BATCH, PLAIN):
        assert (
            await app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": key})
        ).status_code == 200
    await app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": B})  # 404: not its model
    assert [t for _, _, t in metrics.requests] == ["team-a", "team-a", "batch", "default", "team-b"]
    assert [s for _, s, _ in metrics.requests] == [200, 200, 200, 200, 404]
    assert [t for t, _, _ in metrics.generations] == ["team-a", "team-a", "batch", "default"]
    assert all(p > 0 and c == 4 for _, p, c in metrics.generations)


async def _finish_order(app, sends: list[tuple[str, dict]], gap_s: float = 0.005) -> list[str]:
    """Sends the requests a few ms apart (in order), returns the labels in the order their answers came."""
    order: list[str] = []

    async def one(label: str, key: str, body: dict) -> None:
        r = await app.http.post("/v1/chat/completions", json=body, headers={"Authorization": key})
        order.append(label if r.status_code == 200 else f"{label}:{r.status_code}")

    tasks = []
    for label, (key, body) in enumerate(sends):
        tasks.append(asyncio.ensure_future(one(str(label), key, body)))
        await asyncio.sleep(gap_s)
    await asyncio.gather(*tasks)
    return order


async def test_a_flood_from_one_tenant_delays_another_by_about_one_request(make_app):
    app = await make_app(SLOW, auth=auth(), max_running=1, max_in_flight=64)
    body = {**CHAT, "max_tokens": 5, "ignore_eos": True}
    sends = [(A1, body)] * 8 + [(PLAIN, body)]  # team-a floods, then a key of no tenant sends one
    order = await _finish_order(app, sends)
    # FIFO would serve it last (9th); fair queuing serves it as soon as the running one ends
    assert order.index("8") <= 2, order


async def test_a_higher_class_is_served_first_and_a_lower_one_shed_first(make_app):
    app = await make_app(SLOW, auth=auth(), max_running=1, max_in_flight=4)  # 1 running, 3 waiting
    body = {**CHAT, "max_tokens": 5, "ignore_eos": True}
    # batch (low) fills the engine and the queue; then team-a (normal) sends two
    sends = [(BATCH, body)] * 4 + [(A1, body)] * 2
    t0 = time.monotonic()
    order = await _finish_order(app, sends)
    # the running batch request ends first; team-a's two go before the batch requests still waiting,
    # and took the places of the newest two of them (503, Retry-After)
    assert [o for o in order if ":" not in o] == ["0", "4", "5", "1"], order
    assert sorted(o for o in order if ":" in o) == ["2:503", "3:503"], order
    assert time.monotonic() - t0 < 5


def test_what_fails_open_when_the_budget_holder_cannot_be_reached():
    """A tenant says; keys of no tenant follow `limits.on_budget_unreachable` (closed by default); an open API
    always serves (under per-replica limits): before, it refused every request with 503 while the holder was out."""
    from serving.api.security import Authenticator

    closed = Authenticator(auth(), LimitsConfig(requests_per_minute=10))
    assert not closed.identify(PLAIN).owner.fail_open
    assert not closed.identify(A1).owner.fail_open  # team-a: the default, closed
    opened = Authenticator(auth(), LimitsConfig(requests_per_minute=10, on_budget_unreachable="open"))
    assert opened.identify(PLAIN).owner.fail_open
    assert Authenticator(AuthConfig(mode="open"), LimitsConfig(requests_per_minute=10)).identify(None).owner.fail_open
