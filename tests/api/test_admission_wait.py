"""The wait for a place in the engine (our fair queue, serving/api/fair_queue.py), per request: measured in
`OpenAIServing._admit`, written in the access log (`admission_wait_ms`), observed by tenant in
`Metrics.admission_waited` (refusals too) and handed to the response (`x-serving-admission-ms`).

A test holds the engine's places by hand (a ticket of the queue's own), so the time a request must wait
is the test's: it releases them after `HOLD_S`, and the request waited at least that long.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

import pytest

from serving.api.fair_queue import Flow
from serving.api.openai_serving import ADMISSION_HEADER, OpenAIServing, take_admission_ms
from serving.api.protocol import CompletionRequest
from serving.config import AuthConfig, LimitsConfig, TenantConfig
from serving.engine.simulator import SimulatedEngine, SimulatorConfig
from serving.observability.logging import ACCESS_LOGGER
from serving.observability.metrics import NullMetrics
from tests.inprocess import FAST, MODEL, InProcessApp

HOLD_S = 0.3
HOLDER = Flow("holder", "holder")
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
EMBED = "sim-embed"

KEYS = {
    "SERVING_TEST_ADMISSION_A": "sk-admission-team-a-0001",
    "SERVING_TEST_ADMISSION_BATCH": "sk-admission-batch-0001",
    "SERVING_TEST_ADMISSION_PLAIN": "sk-admission-plain-0001",
}
TEAM_A, BATCH, PLAIN = (f"Bearer {v}" for v in KEYS.values())


class Admissions(NullMetrics):
    def __init__(self) -> None:
        self.waits: list[tuple[str, str, float]] = []  # (model, tenant, seconds)

    def admission_waited(self, model: str, tenant: str, seconds: float) -> None:
        self.waits.append((model, tenant, seconds))

    def of(self, tenant: str) -> list[float]:
        return [s for _, t, s in self.waits if t == tenant]


@pytest.fixture
def access_lines(monkeypatch) -> list[dict[str, Any]]:
    """The access log's records of the test, as dicts (`event` and the fields)."""
    lines: list[dict[str, Any]] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append({"event": record.getMessage(), **getattr(record, "fields", {})})

    logger = logging.getLogger(ACCESS_LOGGER)
    monkeypatch.setattr(logger, "disabled", False)
    handler = Keep()
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


async def until_queued(serving: OpenAIServing, n: int) -> None:
    assert serving.queue is not None
    for _ in range(500):
        if serving.queue.queued >= n:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{serving.queue.queued} requests waiting, expected {n}")


async def held_while(serving: OpenAIServing, waiting: int, requests: list[Any]) -> list[Any]:
    """Takes every place of the engine, starts `requests` (coroutines), waits until `waiting` of them wait
    in the queue, keeps the places HOLD_S longer, then frees them: each request waited at least HOLD_S."""
    queue = serving.queue
    assert queue is not None
    held = [queue.arrive(HOLDER) for _ in range(queue.max_running)]
    assert all(t.running for t in held)
    tasks = [asyncio.ensure_future(r) for r in requests]
    await until_queued(serving, waiting)
    await asyncio.sleep(HOLD_S)
    for t in held:
        queue.leave(t)
    return await asyncio.gather(*tasks)


def generation_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == "generation"]


async def test_a_request_admitted_at_once_logs_and_reports_a_wait_of_zero(make_app, access_lines):
    metrics = Admissions()
    app = await make_app(max_running=2, metrics=metrics)
    r = await app.http.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 200, r.text
    stream = await app.http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")
    lines = generation_lines(access_lines)
    assert [line["status"] for line in lines] == ["ok", "ok"]
    assert [line["admission_wait_ms"] for line in lines] == [0.0, 0.0]
    assert metrics.waits == [(MODEL, "anonymous", 0.0)] * 2
    # a model without a fair queue (tests, tools) is admitted at once too: 0 in the log, nothing to observe
    plain = Admissions()
    app = await make_app(metrics=plain)
    assert (await app.http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})).is_success
    assert generation_lines(access_lines)[-1]["admission_wait_ms"] == 0.0
    assert plain.waits == []


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/chat/completions", {**CHAT, "stream": True}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True}),
        ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 4}),
    ],
    ids=["chat", "chat-stream", "completions-stream", "responses"],
)
async def test_a_request_behind_a_full_engine_logs_at_least_the_time_it_waited(make_app, access_lines, path, body):
    metrics = Admissions()
    app = await make_app(max_running=2, max_in_flight=8, metrics=metrics)
    (r,) = await held_while(app.serving, 1, [app.http.post(path, json=body)])
    assert r.status_code == 200, r.text
    (line,) = generation_lines(access_lines)
    assert line["status"] == "ok"
    assert HOLD_S * 1000 <= line["admission_wait_ms"] < 5000, line
    # the engine's own queue is another figure: the request found the engine free once admitted
    assert line["ttft_ms"] < HOLD_S * 1000
    ((model, tenant, waited),) = metrics.waits
    assert (model, tenant) == (MODEL, "anonymous") and HOLD_S <= waited < 5
    assert line["admission_wait_ms"] == round(waited * 1000, 2)


async def test_an_embeddings_request_logs_its_admission_wait(access_lines):
    metrics = Admissions()
    engine = SimulatedEngine(SimulatorConfig(max_model_len=64, embedding_size=32, **FAST), task="embed")
    info = await engine.start()
    serving = OpenAIServing(engine, EMBED, info.max_model_len, max_running=1, max_in_flight=4, metrics=metrics)
    app = InProcessApp([serving], metrics=metrics, tasks={EMBED: "embed"})
    try:
        (r,) = await held_while(serving, 1, [app.http.post("/v1/embeddings", json={"model": EMBED, "input": "a"})])
        assert r.status_code == 200, r.text
        (line,) = [line for line in access_lines if line["event"] == "embeddings"]
        assert line["status"] == "ok" and HOLD_S * 1000 <= line["admission_wait_ms"] < 5000
        assert [t for _, t, _ in metrics.waits] == ["anonymous"]
    finally:
        await app.aclose()


async def test_the_admission_wait_is_observed_by_tenant_refusals_included(make_app, monkeypatch, access_lines):
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)
    auth = AuthConfig(
        api_keys_env="SERVING_TEST_ADMISSION_PLAIN",
        tenants=[
            TenantConfig(name="team-a", keys_env="SERVING_TEST_ADMISSION_A"),
            TenantConfig(name="batch", keys_env="SERVING_TEST_ADMISSION_BATCH", priority="low"),
        ],
    )
    metrics = Admissions()
    app = await make_app(auth=auth, metrics=metrics, max_running=1, max_in_flight=2)  # 1 running, 1 waiting

    def chat(key: str):
        return app.http.post("/v1/chat/completions", json=CHAT, headers={"Authorization": key})

    queue = app.serving.queue
    held = queue.arrive(HOLDER)  # the engine's one place
    displaced = asyncio.ensure_future(chat(BATCH))  # waits, then loses its place to team-a (a higher class)
    await until_queued(app.serving, 1)
    await asyncio.sleep(0.1)
    team_a = asyncio.ensure_future(chat(TEAM_A))
    assert (await displaced).status_code == 503
    assert (await chat(BATCH)).status_code == 503  # the queue is full of a higher class: refused at once
    await asyncio.sleep(HOLD_S)  # team-a has been waiting at least since the batch request lost its place
    queue.leave(held)
    assert (await team_a).status_code == 200
    assert (await chat(PLAIN)).status_code == 200  # a key of no tenant, admitted at once
    assert Counter(t for _, t, _ in metrics.waits) == {"batch": 2, "team-a": 1, "default": 1}
    assert {m for m, _, _ in metrics.waits} == {MODEL}
    waited_displaced, waited_shed = metrics.of("batch")
    assert waited_displaced >= 0.1 and waited_shed == 0.0
    assert metrics.of("team-a")[0] >= HOLD_S
    assert metrics.of("default") == [0.0]
    # only admitted requests have a generation line (the middleware logs the refusals as `rejected`)
    assert [(line["tenant"], line["admission_wait_ms"] > 0) for line in generation_lines(access_lines)] == [
        ("team-a", True),
        ("default", False),
    ]


async def test_a_request_that_times_out_in_the_queue_is_observed_with_its_wait(make_app):
    metrics = Admissions()
    app = await make_app(max_running=1, max_in_flight=4, metrics=metrics, limits=LimitsConfig(request_timeout_s=0.2))
    (r,) = await held_while(app.serving, 1, [app.http.post("/v1/chat/completions", json=CHAT)])
    assert r.status_code == 504, r.text
    ((_, tenant, waited),) = metrics.waits
    assert tenant == "anonymous" and 0.2 <= waited < HOLD_S + 1


async def test_the_header_value_is_set_in_the_request_s_task_before_its_answer_begins(make_app):
    """What the response header states (`take_admission_ms`): set by the time a whole body or a stream's
    first chunk exists, which is when the response, and its headers, are made."""
    app = await make_app(max_running=1, max_in_flight=4)
    serving: OpenAIServing = app.serving

    async def answered(stream: bool) -> str | None:
        req = CompletionRequest(model=MODEL, prompt="hi", max_tokens=2, stream=stream)
        result = await serving.completions(req)
        value = take_admission_ms()
        if stream:
            async for _ in result:  # type: ignore[union-attr]
                pass
        assert take_admission_ms() is None  # cleared once read
        return value

    assert await asyncio.ensure_future(answered(False)) == "0.0"
    waited = await held_while(serving, 2, [answered(False), answered(True)])
    assert all(value is not None and float(value) >= HOLD_S * 1000 for value in waited), waited


# -- the response header ---------------------------------------------------------------------------


AT_ONCE = [
    ("/v1/chat/completions", CHAT),
    ("/v1/chat/completions", {**CHAT, "stream": True}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 4}),
    ("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 4, "stream": True}),
]


@pytest.mark.parametrize("max_running", [2, None], ids=["fair-queue", "no-queue"])
async def test_a_response_admitted_at_once_states_a_wait_of_zero(make_app, max_running):
    app = await make_app(max_running=max_running)
    for path, body in AT_ONCE:
        r = await app.http.post(path, json=body)
        assert r.status_code == 200, (path, r.text)
        assert r.headers[ADMISSION_HEADER] == "0.0", (path, body)


async def test_a_response_behind_a_full_engine_states_at_least_the_time_it_waited(make_app, access_lines):
    app = await make_app(max_running=1, max_in_flight=8)
    sends = [app.http.post(path, json=body) for path, body in AT_ONCE[:2] + AT_ONCE[-1:]]
    answers = await held_while(app.serving, 3, sends)
    assert [r.status_code for r in answers] == [200] * 3
    stated = [float(r.headers[ADMISSION_HEADER]) for r in answers]
    assert all(HOLD_S * 1000 <= ms < 5000 for ms in stated), stated
    # the header (1 decimal) and the log line (2) state the same wait
    logged = sorted(line["admission_wait_ms"] for line in generation_lines(access_lines))
    assert sorted(stated) == pytest.approx(logged, abs=0.06)


async def test_an_embeddings_response_states_its_admission_wait(access_lines):
    engine = SimulatedEngine(SimulatorConfig(max_model_len=64, embedding_size=32, **FAST), task="embed")
    info = await engine.start()
    serving = OpenAIServing(engine, EMBED, info.max_model_len, max_running=1, max_in_flight=4)
    app = InProcessApp([serving], tasks={EMBED: "embed"})
    try:
        body = {"model": EMBED, "input": "a"}
        assert (await app.http.post("/v1/embeddings", json=body)).headers[ADMISSION_HEADER] == "0.0"
        (r,) = await held_while(serving, 1, [app.http.post("/v1/embeddings", json=body)])
        assert r.status_code == 200 and float(r.headers[ADMISSION_HEADER]) >= HOLD_S * 1000
    finally:
        await app.aclose()


async def test_a_request_refused_by_the_queue_has_no_admission_header(make_app):
    app = await make_app(max_running=1, max_in_flight=2, limits=LimitsConfig(request_timeout_s=0.2))
    queue = app.serving.queue
    held = queue.arrive(HOLDER)
    timed_out = asyncio.ensure_future(app.http.post("/v1/chat/completions", json=CHAT))
    await until_queued(app.serving, 1)
    shed = await app.http.post("/v1/chat/completions", json=CHAT)  # the queue is full
    assert shed.status_code == 503 and ADMISSION_HEADER not in shed.headers
    r = await timed_out
    assert r.status_code == 504 and ADMISSION_HEADER not in r.headers
    queue.leave(held)
    admitted = await app.http.post("/v1/chat/completions", json=CHAT)
    assert admitted.status_code == 200 and admitted.headers[ADMISSION_HEADER] == "0.0"
