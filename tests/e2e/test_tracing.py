"""One trace from the client to the engine, on the dev stack with tracing on: the real vLLM, a real OTLP receiver.

configs/dev.yaml with `observability.tracing` on, exporting over OTLP/gRPC to
a receiver in this test's process (tests/unit/test_tracing.py's
`OTLPReceiver`: the TraceService of opentelemetry-proto on a gRPC server),
and two replicas of the tiny model, so that a request can be forwarded from
the replica it entered at to the one the scheduler placed it on. The client
is the official openai SDK, sending a W3C `traceparent` of its own. Checked,
by span ids: one trace id across the request's server span (the client's
span its parent), the routing decision, our fair queue's wait, the
generation, vLLM's own `llm_request` span (joined through the trace headers
vLLM is given, with its prefill and decode latencies) and the engine's
phases; a forwarded request's spans on the serving replica under the entry's
`forward` span; and the proxy path's (Serve's ingress, then a handle call)
generation under the ingress's request span.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from loadtests.servers import free_ports
from serving.api.forwarded import ENTRY_HEADER, REPLICA_HEADER
from tests.e2e.conftest import dev_config, start_stack
from tests.unit.test_tracing import OTLPReceiver, ReceivedSpan

DIRECT, PROXY = free_ports(2)
SERVICE = "serving-e2e"
SERVER, CLIENT = 2, 3  # OTLP span kinds


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    with OTLPReceiver("grpc") as r:
        yield r


@pytest.fixture(scope="module")
def stack(receiver, tmp_path_factory):
    data = dev_config(DIRECT, PROXY)
    args = data["applications"][0]["args"]
    args["observability"] = {"tracing": {"enabled": True, "endpoint": receiver.endpoint, "service_name": SERVICE}}
    model = args["models"][0]
    model["deployment"]["autoscaling"].update(min_replicas=2, max_replicas=2)
    log = tmp_path_factory.mktemp("serve") / "serve-tracing.log"
    with start_stack(data, log, timeout_s=600) as server:
        yield server


def client(port: int) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)


def traceparent() -> tuple[str, str, str]:
    """A client's own span, sampled: (trace id, span id, its traceparent header)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def chat(port: int, prompt: str, header: str) -> Any:
    return client(port).chat.completions.with_raw_response.create(
        model="tiny-llama",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=8,
        extra_body={"ignore_eos": True},  # 8 tokens, whatever the random-weight model says
        extra_headers={"traceparent": header},
    )


def trace_of(receiver: OTLPReceiver, trace_id: str, want: set[str]) -> list[ReceivedSpan]:
    """The trace's spans once every name in `want` arrived (the replicas export in batches, every 5 s)."""
    return receiver.wait_for(lambda spans: want <= {s.name for s in spans if s.trace_id == trace_id}, 40)


class Tree:
    def __init__(self, spans: list[ReceivedSpan], trace_id: str) -> None:
        self.spans = [s for s in spans if s.trace_id == trace_id]
        self.by_id = {s.span_id: s for s in self.spans}

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str, **attributes: Any) -> ReceivedSpan:
        found = [s for s in self.named(name) if all(s.attributes.get(k) == v for k, v in attributes.items())]
        assert len(found) == 1, (name, attributes, [(s.name, s.attributes) for s in self.spans])
        return found[0]

    def children(self, parent: ReceivedSpan, name: str) -> list[ReceivedSpan]:
        return [s for s in self.named(name) if s.parent_span_id == parent.span_id]

    def render(self) -> str:
        """The tree as a trace viewer draws it (start and length in ms from the root), for `pytest -s`."""
        root = min(self.spans, key=lambda s: s.start_ns)
        lines: list[str] = []

        def add(span: ReceivedSpan, depth: int) -> None:
            start, length = (span.start_ns - root.start_ns) / 1e6, (span.end_ns - span.start_ns) / 1e6
            lines.append(f"{start:8.1f} {length:8.1f}  {'  ' * depth}{span.name}")
            for child in sorted((s for s in self.spans if s.parent_span_id == span.span_id), key=lambda s: s.start_ns):
                add(child, depth + 1)

        for top in (s for s in self.spans if s.parent_span_id not in self.by_id):
            add(top, 0)
        return "\n".join([f"trace {root.trace_id}:  start ms, length ms, span", *lines])


ENGINE = {"generate", "llm_request", "engine.queue", "engine.prefill", "engine.decode", "fair_queue.wait"}


def check_engine_spans(tree: Tree, request_span: ReceivedSpan) -> None:
    """Under the request span that served it: our queue wait and the generation; under the generation,
    vLLM's own span and the engine's phases, in order on one timeline."""
    [queue] = tree.children(request_span, "fair_queue.wait")
    [generate] = tree.children(request_span, "generate")
    assert queue.end_ns <= generate.start_ns
    assert generate.attributes["gen_ai.request.model"] == "tiny-llama"
    assert generate.attributes["gen_ai.usage.output_tokens"] == 8
    [vllm] = tree.children(generate, "llm_request")  # vLLM's span, joined through its trace headers
    assert vllm.kind == SERVER
    for key in ("gen_ai.latency.time_in_model_prefill", "gen_ai.latency.time_in_model_decode"):
        assert vllm.attributes[key] > 0, vllm.attributes
    assert vllm.attributes["gen_ai.usage.completion_tokens"] == 8
    phases = [tree.children(generate, n) for n in ("engine.queue", "engine.prefill", "engine.decode")]
    assert all(len(p) == 1 for p in phases), phases
    queue_phase, prefill, decode = (p[0] for p in phases)
    assert queue_phase.end_ns == prefill.start_ns and prefill.end_ns == decode.start_ns
    # the engine's clock and ours, on one timeline: the phases lie within the generation (1 ms of slack)
    assert generate.start_ns - 1_000_000 <= queue_phase.start_ns and decode.end_ns <= generate.end_ns + 1_000_000
    assert decode.attributes["gen_ai.usage.output_tokens"] == 8
    assert {s.service for s in (queue, generate, vllm, decode)} == {SERVICE}


def test_one_trace_from_the_client_to_the_engine(stack, receiver):
    trace_id, client_span, header = traceparent()
    raw = chat(DIRECT, "trace this request", header)
    assert raw.http_response.status_code == 200
    forwarded = raw.headers[REPLICA_HEADER] != raw.headers[ENTRY_HEADER]
    want = ENGINE | {"POST /v1/chat/completions", "route"} | ({"forward"} if forwarded else set())
    tree = Tree(trace_of(receiver, trace_id, want), trace_id)
    assert want <= {s.name for s in tree.spans}, sorted(s.name for s in tree.spans)
    entry = tree.one("POST /v1/chat/completions", **{"serving.forwarded": False})
    assert entry.parent_span_id == client_span and entry.kind == SERVER  # the client's traceparent
    assert entry.attributes["http.response.status_code"] == 200 and entry.service == SERVICE
    [route] = tree.children(entry, "route")
    assert route.attributes["serving.route.replica"] == raw.headers[REPLICA_HEADER]
    served = entry
    if forwarded:
        [forward] = tree.children(route, "forward")
        served = tree.one("POST /v1/chat/completions", **{"serving.forwarded": True})
        assert served.parent_span_id == forward.span_id
    check_engine_spans(tree, served)
    assert all(s.parent_span_id in tree.by_id or s is entry for s in tree.spans)  # one tree, rooted at the client
    print(tree.render())


def test_a_forwarded_request_s_spans_on_the_serving_replica_join_the_entry_s_trace(stack, receiver):
    """Prompts that share a prefix go to one replica (where it was served first, its home once shared) from every
    entry point, so one entering at the other replica is forwarded: one of those. (Distinct prompts, sent one at a
    time to an idle pair, are served where they enter: nothing to forward for.)"""
    shared = "A long system prompt every request of this test shares. " * 12  # over the routing key's 512 chars
    for i in range(30):
        trace_id, client_span, header = traceparent()
        raw = chat(DIRECT, f"{shared}{i} {secrets.token_hex(8)}", header)  # a client and connection each
        assert raw.http_response.status_code == 200
        if raw.headers[REPLICA_HEADER] != raw.headers[ENTRY_HEADER]:
            break
        time.sleep(0.3)  # every entry point learns the prefix's holder within a refresh (250 ms)
    else:
        pytest.fail("no request was forwarded in 30")
    want = ENGINE | {"POST /v1/chat/completions", "route", "forward"}
    tree = Tree(trace_of(receiver, trace_id, want), trace_id)
    entry = tree.one("POST /v1/chat/completions", **{"serving.forwarded": False})
    served = tree.one("POST /v1/chat/completions", **{"serving.forwarded": True})
    assert entry.parent_span_id == client_span
    [route] = tree.children(entry, "route")
    assert route.attributes["serving.route.placement"] == "forwarded"
    [forward] = tree.children(route, "forward")
    assert forward.kind == CLIENT and forward.attributes["serving.replica"] == raw.headers[REPLICA_HEADER]
    assert served.parent_span_id == forward.span_id and served.kind == SERVER  # the hop carried the trace
    assert entry.attributes["serving.replica"] == raw.headers[REPLICA_HEADER]
    check_engine_spans(tree, served)
    assert not tree.children(entry, "generate")  # the entry's engine did not serve it
    print(tree.render())


def test_the_proxy_path_carries_the_trace_through_serve_s_handle(stack, receiver):
    trace_id, client_span, header = traceparent()
    raw = chat(PROXY, "through the proxy", header)
    assert raw.http_response.status_code == 200
    tree = Tree(trace_of(receiver, trace_id, ENGINE | {"POST /v1/chat/completions"}), trace_id)
    ingress = tree.one("POST /v1/chat/completions")  # the ingress replica's (the LLM replica has no HTTP here)
    assert ingress.parent_span_id == client_span
    check_engine_spans(tree, ingress)  # in the LLM replica, under the ingress's span: the request carried it
    print(tree.render())
