"""OpenTelemetry tracing: off by default, on by config (`observability.tracing`), spans exported over OTLP.

Off, it costs nothing: this module imports no OpenTelemetry package until
`configure` turns tracing on, and every hook on the request path is one
`active()` check (a module global). On, each process that serves requests
(an LLM-server replica, an ingress replica) has one `TracerProvider`: a
parent-based sampler (a caller's `traceparent` decides; a new trace is
sampled at `sample_ratio`), a batch processor and an OTLP exporter (gRPC or
HTTP/protobuf). It is also made the process's global provider, so vLLM's own
`llm_request` span (which vLLM makes through the global provider, joined to
ours through the W3C headers a request carries to the engine) leaves with
our service name and sampler.

Context moves explicitly, never through a span left attached across an
`await` of another task: the HTTP middleware attaches its server span for
the request's task only; a span made elsewhere names its parent (a
`Context`, or W3C headers: `traceparent`/`tracestate`). Headers are how a
trace crosses a process: a forwarded request's HTTP hop, a Serve handle
call (on the request object), and the engine (`EngineRequest.trace_headers`).

Span names and attributes: docs/observability.md, "Tracing".
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

logger = logging.getLogger(__name__)

TRACE_HEADERS = ("traceparent", "tracestate")
_TRACE_HEADER_BYTES = tuple(h.encode() for h in TRACE_HEADERS)


class TracingConfig(Protocol):
    """What `configure` reads: serving.config's `TracingConfig` (this layer imports no config)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def protocol(self) -> str: ...  # "grpc" | "http/protobuf"
    @property
    def service_name(self) -> str: ...
    @property
    def sample_ratio(self) -> float: ...


# What `configure` set up: None while tracing is off (the only thing the request path reads).
_tracer: Any = None
_provider: Any = None
_config: TracingConfig | None = None
_global_set = False
_lock = threading.Lock()


def active() -> bool:
    """Whether this process traces (the one check every hook makes first)."""
    return _tracer is not None


def config() -> TracingConfig | None:
    """The configuration tracing runs with in this process (None: off)."""
    return _config if _tracer is not None else None


def configure(cfg: TracingConfig, exporter: Any = None) -> bool:
    """Turn tracing on in this process as `cfg` says (nothing if it is off); whether it is on.

    Idempotent: a process configured with the same settings keeps its provider.
    `exporter`: a span exporter to use instead of OTLP's (tests: an in-memory one);
    its spans are exported one by one, at once.
    """
    global _tracer, _provider, _config, _global_set
    if not cfg.enabled:
        return active()
    with _lock:
        if _tracer is not None and _config == cfg and exporter is None:
            return True
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from serving import __version__

        provider = TracerProvider(
            resource=Resource.create({"service.name": cfg.service_name, "service.version": __version__}),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)),
        )
        if exporter is None:
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(cfg)))
        else:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        old, _provider = _provider, provider
        _tracer = provider.get_tracer("serving", __version__)
        _config = cfg
        if not _global_set:
            # Once per process (OpenTelemetry refuses a second): vLLM's spans go through it.
            trace.set_tracer_provider(provider)
            _global_set = True
            atexit.register(_flush_at_exit)
        if old is not None:
            old.shutdown()
    logger.info("tracing: on, OTLP %s to %s, service %s", cfg.protocol, cfg.endpoint, cfg.service_name)
    return True


def _otlp_exporter(cfg: TracingConfig) -> Any:
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=cfg.endpoint, insecure=not cfg.endpoint.startswith("https://"))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=otlp_endpoint(cfg))


def otlp_endpoint(cfg: TracingConfig) -> str:
    """The endpoint as an exporter of `cfg.protocol` is given it (HTTP: with its /v1/traces path)."""
    if cfg.protocol == "grpc" or cfg.endpoint.rstrip("/").endswith("/v1/traces"):
        return cfg.endpoint
    return cfg.endpoint.rstrip("/") + "/v1/traces"


def flush(timeout_s: float = 5.0) -> bool:
    """Export the spans ended so far (tests, shutdown)."""
    provider = _provider
    return bool(provider.force_flush(int(timeout_s * 1000))) if provider is not None else True


def _flush_at_exit() -> None:
    provider = _provider
    if provider is not None:
        provider.shutdown()


def turn_off() -> None:
    """Stop tracing in this process (tests): spans already ended are exported first."""
    global _tracer, _provider, _config
    with _lock:
        provider, _provider, _tracer, _config = _provider, None, None, None
    if provider is not None:
        provider.shutdown()


# -- spans ----------------------------------------------------------------------------------


def context_from(headers: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry context W3C `headers` name (an empty one, for a new trace, if they name none)."""
    from opentelemetry.context import Context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    if not headers:
        return Context()
    return TraceContextTextMapPropagator().extract(headers, context=Context())


def asgi_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The W3C trace headers among an ASGI scope's headers."""
    return {k.decode(): v.decode("latin-1") for k, v in raw if k in _TRACE_HEADER_BYTES}


def start(
    name: str,
    parent: Any = None,
    kind: str = "internal",
    attributes: Mapping[str, Any] | None = None,
    start_ns: int | None = None,
) -> Any:
    """A new span (not made current), or None while tracing is off.

    `parent`: a span, a context, W3C headers (a dict), or None for the current context.
    `kind`: "internal", "server" or "client".
    """
    tracer = _tracer
    if tracer is None:
        return None
    from opentelemetry import trace
    from opentelemetry.context import Context

    if parent is None or isinstance(parent, Context):  # (a Context is a dict: first)
        context = parent
    elif isinstance(parent, trace.Span):
        context = trace.set_span_in_context(parent)
    else:
        context = context_from(parent)
    return tracer.start_span(
        name,
        context=context,
        kind=_KINDS[kind](),
        attributes={k: v for k, v in attributes.items() if v is not None} if attributes else None,
        start_time=start_ns,
    )


def _kind(name: str) -> Any:
    def get() -> Any:
        from opentelemetry.trace import SpanKind

        return getattr(SpanKind, name)

    return get


_KINDS = {"internal": _kind("INTERNAL"), "server": _kind("SERVER"), "client": _kind("CLIENT")}


def end(
    span: Any,
    error: BaseException | str | None = None,
    attributes: Mapping[str, Any] | None = None,
    end_ns: int | None = None,
) -> None:
    """End `span` (None: nothing), with `attributes` (None values left out) and an error status if `error`."""
    if span is None:
        return
    for key, value in (attributes or {}).items():
        if value is not None:
            span.set_attribute(key, value)
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        kind = error if isinstance(error, str) else type(error).__name__
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind if isinstance(error, str) else str(error)[:200]))
    span.end(end_time=end_ns)


def headers_of(span: Any) -> dict[str, str] | None:
    """The W3C headers that make a span's children, elsewhere, join it (None: no span)."""
    if span is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def current_headers() -> dict[str, str] | None:
    """The W3C headers of the span current in this task (None: tracing off, or no span)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return headers_of(span) if span.get_span_context().is_valid else None


def attach(span: Any) -> Any:
    """Make `span` current in this task until `detach` (the caller's task only); a token."""
    from opentelemetry import context, trace

    return context.attach(trace.set_span_in_context(span))


def detach(token: Any) -> None:
    from opentelemetry import context

    context.detach(token)


def record(
    name: str, parent: Mapping[str, str] | None, start_ns: int, end_ns: int, attributes: Mapping[str, Any] | None = None
) -> None:
    """A span of times already known (an engine's phases), under the span W3C `parent` headers name."""
    if _tracer is None or not parent:
        return
    span = start(name, dict(parent), attributes=attributes, start_ns=start_ns)
    span.end(end_time=max(start_ns, end_ns))


def record_engine_phases(
    parent: Mapping[str, str] | None,
    queued_ns: int,
    scheduled_ns: int | None,
    first_token_ns: int | None,
    last_token_ns: int | None,
    prompt_tokens: int,
    output_tokens: int,
) -> None:
    """An engine request's phases as spans under `parent` (its `generate` span's headers), every engine alike:
    `engine.queue` (waiting in the engine's scheduler), `engine.prefill` (scheduled to the first token) and
    `engine.decode` (first to last token); a phase not reached has no span. Wall-clock nanoseconds."""
    if _tracer is None or not parent:
        return
    if scheduled_ns is None:
        return
    record("engine.queue", parent, queued_ns, scheduled_ns)
    if first_token_ns is None:
        return
    record("engine.prefill", parent, scheduled_ns, first_token_ns, {"gen_ai.usage.input_tokens": prompt_tokens})
    if last_token_ns is not None:
        record("engine.decode", parent, first_token_ns, last_token_ns, {"gen_ai.usage.output_tokens": output_tokens})


def sampled_trace_id(headers: Mapping[str, str] | None) -> str | None:
    """The trace id W3C `headers` name if that trace is sampled (what a log line quotes to find it), else None."""
    parts = (headers or {}).get("traceparent", "").split("-")
    try:
        sampled = len(parts) == 4 and bool(int(parts[3], 16) & 1)
    except ValueError:
        return None
    return parts[1] if sampled else None
