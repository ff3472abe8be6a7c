"""Tracing on the request path, in-process: the real app over the simulated engine, spans kept in memory.

One trace per request, from the caller's W3C `traceparent` down to the
engine's phases: the HTTP server span, our fair queue's wait, the generation
and the engine's queue, prefill and decode, each under the right parent; a
request placed on another replica (real loopback HTTP, as in
test_forwarding.py) carries the trace there, so the serving replica's spans
join the trace where it entered. Sampling follows the caller's flag, else
the configured ratio; health probes are not traced. The OTLP export itself,
and that tracing off imports no OpenTelemetry: tests/unit/test_tracing.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from loadtests import sse
from serving.api import openai_serving
from serving.api.forwarded import REPLICA_HEADER
from serving.config import TracingConfig
from serving.observability import tracing
from serving.routing.scheduler import DRAINING
from tests.api.test_forwarding import AUTH, chat, connect, keys, replicas  # noqa: F401 (fixtures)
from tests.inprocess import MODEL

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{CALLER_SPAN}-00"


class Trace:
    """The spans the app ended, as the exporter got them."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self.exporter = exporter

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]


def tracing_on(sample_ratio: float = 1.0) -> Iterator[Trace]:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingConfig(enabled=True, sample_ratio=sample_ratio), exporter=exporter)
    try:
        yield Trace(exporter)
    finally:
        tracing.turn_off()


@pytest.fixture
def spans() -> Iterator[Trace]:
    yield from tracing_on()


@pytest.fixture
def unsampled() -> Iterator[Trace]:
    yield from tracing_on(sample_ratio=0.0)


def hex_id(value: int, digits: int) -> str:
    return f"{value:0{digits}x}"


def parent_of(span: ReadableSpan) -> str | None:
    return hex_id(span.parent.span_id, 16) if span.parent is not None else None


def span_id(span: ReadableSpan) -> str:
    return hex_id(span.context.span_id, 16)


def trace_id(span: ReadableSpan) -> str:
    return hex_id(span.context.trace_id, 32)


def body(stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": stream}


@pytest.mark.parametrize("stream", [False, True])
async def test_one_trace_from_the_caller_s_traceparent_down_to_the_engine_s_phases(make_app, spans, stream):
    app = await make_app(max_running=4)
    response = await app.http.post("/v1/chat/completions", json=body(stream), headers={"traceparent": SAMPLED})
    assert response.status_code == 200, response.text
    server = spans.one("POST /v1/chat/completions")
    assert server.kind == SpanKind.SERVER
    assert trace_id(server) == TRACE_ID and parent_of(server) == CALLER_SPAN  # the caller's trace, under its span
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["serving.model"] == MODEL
    assert server.attributes["serving.request_id"] == response.headers["x-request-id"]
    queue, generate = spans.one("fair_queue.wait"), spans.one("generate")
    assert parent_of(queue) == span_id(server) and parent_of(generate) == span_id(server)
    assert queue.attributes["serving.queued"] is False  # a free place: admitted at once
    assert generate.attributes["gen_ai.request.model"] == MODEL
    assert generate.attributes["gen_ai.usage.output_tokens"] == 8
    assert generate.attributes["serving.status"] == "ok"
    phases = [spans.one(n) for n in ("engine.queue", "engine.prefill", "engine.decode")]
    for phase in phases:
        assert parent_of(phase) == span_id(generate)
    # On one timeline, in order: queue, prefill, decode, inside the generation, inside the request.
    assert server.start_time <= queue.start_time <= queue.end_time <= generate.start_time
    assert generate.start_time <= phases[0].start_time
    for before, after in zip(phases, phases[1:], strict=False):
        assert before.end_time == after.start_time
    assert phases[-1].end_time <= generate.end_time <= server.end_time
    assert phases[-1].attributes["gen_ai.usage.output_tokens"] == 8
    assert {trace_id(s) for s in spans.spans} == {TRACE_ID}
    if stream:
        assert sse.parse(response.content)[-1] == sse.DONE


async def test_a_request_without_traceparent_starts_a_trace_of_its_own(make_app, spans):
    app = await make_app()
    r1 = await app.client.chat.completions.with_raw_response.create(**body())
    r2 = await app.client.chat.completions.with_raw_response.create(**body())
    assert r1.http_response.status_code == r2.http_response.status_code == 200
    servers = spans.named("POST /v1/chat/completions")
    assert len(servers) == 2 and all(s.parent is None for s in servers)
    assert trace_id(servers[0]) != trace_id(servers[1])


async def test_the_caller_s_sampling_decides_else_the_configured_ratio(make_app, unsampled):
    """sample_ratio 0: a new trace is not sampled, nor is a caller's unsampled one; a caller's sampled one is."""
    app = await make_app()
    for headers in ({}, {"traceparent": NOT_SAMPLED}):
        assert (await app.http.post("/v1/chat/completions", json=body(), headers=headers)).status_code == 200
    assert unsampled.spans == []
    assert (
        await app.http.post("/v1/chat/completions", json=body(), headers={"traceparent": SAMPLED})
    ).status_code == 200
    names = {s.name for s in unsampled.spans}
    assert {"POST /v1/chat/completions", "fair_queue.wait", "generate", "engine.decode"} <= names
    assert {trace_id(s) for s in unsampled.spans} == {TRACE_ID}


async def test_probes_are_not_traced_and_refusals_are_not_server_errors(make_app, spans):
    app = await make_app()
    assert (await app.http.get("/health")).status_code == 200
    assert (await app.http.get("/ready")).status_code == 200
    assert spans.spans == []
    missing = await app.http.post("/v1/chat/completions", json={**body(), "model": "nope"})
    assert missing.status_code == 404
    server = spans.one("POST /v1/chat/completions")
    assert server.attributes["http.response.status_code"] == 404
    assert server.attributes["serving.reason"] == "model_not_found"
    assert server.status.status_code != StatusCode.ERROR  # the caller's mistake, not the server's
    assert not spans.named("generate")


async def test_an_engine_failure_marks_the_request_and_its_generation_as_errors(make_app, spans):
    app = await make_app({"error_rate": 1.0, "error_after_tokens": 0})
    response = await app.http.post("/v1/chat/completions", json=body())
    assert response.status_code == 500
    server, generate = spans.one("POST /v1/chat/completions"), spans.one("generate")
    assert server.status.status_code == StatusCode.ERROR and generate.status.status_code == StatusCode.ERROR
    assert generate.attributes["error.type"] == "EngineError"


async def test_a_full_fair_queue_s_wait_is_a_span_of_its_own(make_app, spans):
    app = await make_app({"decode_s_per_token": 0.02}, max_running=1)
    first = asyncio.ensure_future(app.http.post("/v1/chat/completions", json=body()))
    await asyncio.sleep(0.05)
    second = await app.http.post("/v1/chat/completions", json=body())
    assert (await first).status_code == second.status_code == 200
    waits = sorted(spans.named("fair_queue.wait"), key=lambda s: s.start_time)
    assert [w.attributes["serving.queued"] for w in waits] == [False, True]
    waited_ms = (waits[1].end_time - waits[1].start_time) / 1e6
    assert waited_ms >= 50 and waits[1].attributes["serving.queue_wait_ms"] >= 50


@pytest.mark.parametrize("stream", [False, True])
async def test_a_forwarded_request_s_spans_on_the_serving_replica_join_the_entry_s_trace(replicas, spans, stream):  # noqa: F811
    a, b = await replicas("a"), await replicas("b")
    connect([a, b], a=DRAINING)  # a takes no new request: it must go to b
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{a.url}/v1/chat/completions", json=chat(stream), headers={**AUTH, "traceparent": SAMPLED}
        )
    assert response.status_code == 200 and response.headers[REPLICA_HEADER] == "b", response.text
    tracing.flush()
    servers = spans.named("POST /v1/chat/completions")
    entry = next(s for s in servers if not s.attributes["serving.forwarded"])
    served = next(s for s in servers if s.attributes["serving.forwarded"])
    route, forward = spans.one("route"), spans.one("forward")
    assert parent_of(entry) == CALLER_SPAN
    assert parent_of(route) == span_id(entry)
    assert route.attributes["serving.route.placement"] == "forwarded"
    assert route.attributes["serving.route.replica"] == "b"
    assert list(route.attributes["serving.route.ranked"]) == ["b"]
    assert forward.kind == SpanKind.CLIENT and parent_of(forward) == span_id(route)
    assert forward.attributes["serving.replica"] == "b" and forward.attributes["server.port"] == b.own_port
    # The hop: the serving replica's request span is the forward's child, in the same trace.
    assert parent_of(served) == span_id(forward) and served.kind == SpanKind.SERVER
    generate = spans.one("generate")
    assert parent_of(generate) == span_id(served) and parent_of(spans.one("engine.decode")) == span_id(generate)
    assert {trace_id(s) for s in spans.spans} == {TRACE_ID}
    assert forward.end_time >= served.end_time - 5_000_000  # the forward lasts until the answer ended
    assert entry.attributes["serving.replica"] == "b"


async def test_a_request_served_where_it_entered_has_a_local_route(replicas, spans):  # noqa: F811
    a, b = await replicas("a"), await replicas("b")
    connect([a, b], b=DRAINING)
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{a.url}/v1/chat/completions", json=chat(), headers=AUTH)
    assert response.status_code == 200 and response.headers[REPLICA_HEADER] == "a"
    route = spans.one("route")
    assert route.attributes["serving.route.placement"] == "local" and route.attributes["serving.route.tries"] == 0
    assert not spans.named("forward")
    server = spans.one("POST /v1/chat/completions")
    assert parent_of(spans.one("generate")) == span_id(server) == parent_of(route)


async def test_the_generation_log_line_names_its_trace_when_it_is_sampled(make_app, spans, monkeypatch):
    lines: list[dict[str, Any]] = []
    monkeypatch.setattr(openai_serving, "access_log", lambda event, **fields: lines.append({"event": event, **fields}))
    app = await make_app()
    for header in (SAMPLED, NOT_SAMPLED):
        assert (
            await app.http.post("/v1/chat/completions", json=body(), headers={"traceparent": header})
        ).status_code == 200
    sampled, not_sampled = (line for line in lines if line["event"] == "generation")
    assert sampled["trace_id"] == TRACE_ID and not_sampled["trace_id"] is None
