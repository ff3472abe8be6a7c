"""Metrics through Ray's metrics API: they appear on every node's Prometheus endpoint.

Ray prefixes custom metrics with `ray_` on export, so `serving_requests` is
scraped as `ray_serving_requests_total`-style names; `METRIC_NAMES` lists the
exported names (the dashboard and its test use them).

Cost: every observation is per request, never per token (ITL is observed once
per request as its mean gap), and the engine gauges are refreshed by one
background task per replica every `ENGINE_STATS_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import logging
import os

from ray.util import metrics as ray_metrics

logger = logging.getLogger(__name__)

ENGINE_STATS_INTERVAL_S = 2.0

TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
E2E_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
QUEUE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]

# name in code -> name on Ray's Prometheus endpoint (histograms add _bucket/_sum/_count)
METRIC_NAMES = {
    "requests": "ray_serving_requests_total",
    "rejections": "ray_serving_rejections_total",
    "ttft": "ray_serving_ttft_seconds",
    "itl": "ray_serving_itl_seconds",
    "e2e": "ray_serving_e2e_latency_seconds",
    "queue_wait": "ray_serving_queue_wait_seconds",
    "prompt_tokens": "ray_serving_prompt_tokens_total",
    "completion_tokens": "ray_serving_completion_tokens_total",
    "in_flight": "ray_serving_in_flight",
    "engine": "ray_serving_engine_{stat}",
}

ENGINE_GAUGES = ("running", "waiting", "kv_cache_usage", "prefix_cache_queries", "prefix_cache_hits")

# Errors by class name -> rejection reason.
REJECTION_REASONS = {
    "AuthenticationError": "auth",
    "RateLimitError": "rate_limit",
    "OverloadedError": "queue_full",
    "RequestTimeoutError": "timeout",
    "PayloadTooLargeError": "body_too_large",
}


class Metrics:
    """One per process; created lazily so importing this module costs nothing."""

    def __init__(self) -> None:
        self.requests = ray_metrics.Counter(
            "serving_requests", description="Requests by model, route and HTTP status.", tag_keys=("model", "route", "status")
        )
        self.rejections = ray_metrics.Counter(
            "serving_rejections", description="Requests refused before generation, by reason.", tag_keys=("model", "reason")
        )
        self.ttft = ray_metrics.Histogram(
            "serving_ttft_seconds", description="Time to first token, measured where the engine runs.",
            boundaries=TTFT_BUCKETS, tag_keys=("model",),
        )
        self.itl = ray_metrics.Histogram(
            "serving_itl_seconds", description="Inter-token latency: each request's mean gap per output token.",
            boundaries=ITL_BUCKETS, tag_keys=("model",),
        )
        self.e2e = ray_metrics.Histogram(
            "serving_e2e_latency_seconds", description="Request latency from arrival to last token.",
            boundaries=E2E_BUCKETS, tag_keys=("model",),
        )
        self.queue_wait = ray_metrics.Histogram(
            "serving_queue_wait_seconds", description="Time a request waited in the engine's queue before it was scheduled.",
            boundaries=QUEUE_BUCKETS, tag_keys=("model",),
        )
        self.prompt_tokens = ray_metrics.Counter("serving_prompt_tokens", description="Prompt tokens.", tag_keys=("model",))
        self.completion_tokens = ray_metrics.Counter("serving_completion_tokens", description="Completion tokens.", tag_keys=("model",))
        self.in_flight = ray_metrics.Gauge(
            "serving_in_flight", description="Requests in flight per model and replica.", tag_keys=("model", "replica")
        )
        self.engine = {
            stat: ray_metrics.Gauge(
                f"serving_engine_{stat}", description=f"The engine's own {stat.replace('_', ' ')} (per replica).",
                tag_keys=("model", "replica"),
            )
            for stat in ENGINE_GAUGES
        }

    def request_done(self, model: str, route: str, status: int, error: BaseException | None = None) -> None:
        self.requests.inc(1, tags={"model": model, "route": route, "status": str(status)})
        if error is not None:
            reason = REJECTION_REASONS.get(type(error).__name__)
            if reason:
                self.rejections.inc(1, tags={"model": model, "reason": reason})

    def generation_done(self, model: str, ttft: float | None, itl: float | None, e2e: float,
                        queue_wait: float | None, prompt_tokens: int, completion_tokens: int) -> None:
        tags = {"model": model}
        if ttft is not None:
            self.ttft.observe(ttft, tags=tags)
        if itl is not None:
            self.itl.observe(itl, tags=tags)
        self.e2e.observe(e2e, tags=tags)
        if queue_wait is not None:
            self.queue_wait.observe(queue_wait, tags=tags)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens, tags=tags)
        if completion_tokens:
            self.completion_tokens.inc(completion_tokens, tags=tags)


_metrics: Metrics | None = None


def get_metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def replica_tag() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:
        return f"pid-{os.getpid()}"


async def export_engine_stats(serving, stop: asyncio.Event) -> None:
    """Refresh the per-replica gauges from the engine's own counters until `stop` is set."""
    m = get_metrics()
    tags = {"model": serving.model_id, "replica": replica_tag()}
    while not stop.is_set():
        try:
            stats = await serving.engine.stats()
            for stat, gauge in m.engine.items():
                if stat in stats:
                    gauge.set(stats[stat], tags=tags)
            m.in_flight.set(serving.in_flight, tags=tags)
        except Exception:  # metrics must never take a replica down
            logger.debug("engine stats export failed", exc_info=True)
        try:
            await asyncio.wait_for(stop.wait(), ENGINE_STATS_INTERVAL_S)
        except asyncio.TimeoutError:
            pass
