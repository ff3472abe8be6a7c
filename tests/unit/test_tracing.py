"""serving/observability/tracing.py: spans leave over OTLP (gRPC and HTTP/protobuf) to a real receiver; off, nothing loads.

`OTLPReceiver` is a real OTLP trace receiver in the test's process: the
TraceService of opentelemetry-proto on a gRPC server, or POST /v1/traces on an
HTTP server, decoding what exporters send into `ReceivedSpan`s. The e2e
trace test (tests/e2e/test_tracing.py) uses it against the dev stack.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from serving.config import TracingConfig
from serving.observability import tracing


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind: 1 internal, 2 server, 3 client
    start_ns: int
    end_ns: int
    attributes: dict[str, Any] = field(default_factory=dict)
    service: str | None = None
    status_code: int = 0  # 2: error


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() or None,
                        kind=s.kind,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes={a.key: _value(a.value) for a in s.attributes},
                        service=resource.get("service.name"),
                        status_code=s.status.code,
                    )
                )
    return out


class OTLPReceiver:
    """A real OTLP/gRPC (`protocol="grpc"`) or OTLP/HTTP protobuf receiver on loopback, on a free port."""

    def __init__(self, protocol: str = "grpc") -> None:
        self.protocol = protocol
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._grpc: Any = None
        self._http: ThreadingHTTPServer | None = None

    def _add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._lock:
            self.requests += 1
            self.spans.extend(_spans(request))

    def __enter__(self) -> OTLPReceiver:
        if self.protocol == "grpc":
            receiver = self

            class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
                def Export(self, request: Any, context: Any) -> Any:
                    receiver._add(request)
                    return trace_service_pb2.ExportTraceServiceResponse()

            self._grpc = grpc.server(ThreadPoolExecutor(max_workers=4))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self._grpc)
            self.port = self._grpc.add_insecure_port("127.0.0.1:0")
            self._grpc.start()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            return self
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = trace_service_pb2.ExportTraceServiceRequest()
                request.ParseFromString(data)
                receiver._add(request)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, found: Callable[[list[ReceivedSpan]], bool], timeout_s: float) -> list[ReceivedSpan]:
        """The spans received once `found(spans)` holds (polled); the spans so far after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.received()
            if found(spans):
                return spans
            time.sleep(0.1)
        return self.received()


@pytest.fixture
def off_after() -> Iterator[None]:
    yield
    tracing.turn_off()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_leave_over_otlp_to_a_real_receiver(protocol, off_after):
    with OTLPReceiver(protocol) as receiver:
        cfg = TracingConfig(enabled=True, endpoint=receiver.endpoint, protocol=protocol, service_name="svc-under-test")
        assert tracing.configure(cfg) and tracing.active() and tracing.config() == cfg
        caller = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
        outer = tracing.start("outer", caller, "server", {"a.string": "x", "a.number": 3})
        tracing.record("phase", tracing.headers_of(outer), 1_000, 2_000, {"tokens": 5})
        tracing.end(outer, "boom")
        assert tracing.flush()
        spans = receiver.wait_for(lambda s: len(s) == 2, 10)
    assert receiver.requests >= 1
    by_name = {s.name: s for s in spans}
    outer_got, phase = by_name["outer"], by_name["phase"]
    assert {s.service for s in spans} == {"svc-under-test"}
    assert outer_got.trace_id == phase.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert outer_got.parent_span_id == "00f067aa0ba902b7" and phase.parent_span_id == outer_got.span_id
    assert outer_got.kind == 2 and outer_got.attributes == {"a.string": "x", "a.number": 3, "error.type": "boom"}
    assert outer_got.status_code == 2
    assert (phase.start_ns, phase.end_ns, phase.attributes) == (1_000, 2_000, {"tokens": 5})


def test_an_http_endpoint_is_given_its_traces_path():
    assert tracing.otlp_endpoint(TracingConfig(protocol="http/protobuf", endpoint="http://c:4318")) == (
        "http://c:4318/v1/traces"
    )
    assert tracing.otlp_endpoint(TracingConfig(protocol="http/protobuf", endpoint="http://c:4318/v1/traces/")) == (
        "http://c:4318/v1/traces/"
    )
    assert tracing.otlp_endpoint(TracingConfig(endpoint="http://c:4317")) == "http://c:4317"


def test_off_it_is_one_check_and_nothing_made(off_after):
    assert not tracing.active() and tracing.config() is None
    assert not tracing.configure(TracingConfig())  # off by default
    assert tracing.start("x") is None and tracing.current_headers() is None and tracing.headers_of(None) is None
    tracing.end(None)
    tracing.record("x", {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, 1, 2)


def test_tracing_off_loads_no_opentelemetry_on_the_request_path():
    """A request through the app with tracing off (the default) imports no OpenTelemetry module."""
    code = textwrap.dedent(
        """
        import asyncio, sys
        from tests.inprocess import simulated_app

        async def main():
            app = await simulated_app()
            for stream in (False, True):
                r = await app.http.post("/v1/chat/completions", json={"model": "sim-model", "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
                assert r.status_code == 200, r.text
            await app.aclose()

        asyncio.run(main())
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
