"""What the request path measures, as an interface: no metrics backend is imported here.

The API and the engine-facing serving code call a `Metrics` object that is
handed to them (`build_api(..., metrics=)`, `OpenAIServing(..., metrics=)`);
`NullMetrics` is the default, so tests and tools run without any backend. The
deployments inject `serving.deployments.metrics.RayMetrics`, which exports
through Ray's metrics API to every node's Prometheus endpoint.

Cost: every observation is per request, never per token (TPOT, a request's mean
gap per output token, is observed once per request; the per-token inter-token
latency histogram is vLLM's own, `vllm:inter_token_latency_seconds`, exported
from the replicas by `serving/deployments/engine_metrics.py`), and the engine
gauges are refreshed by one background task per replica every
`ENGINE_STATS_INTERVAL_S`.

Names follow Prometheus' conventions: counters end in `_total`, a ratio in
`_ratio`, cumulative engine counts are counters. The names they replace are
still exported for a release (`DEPRECATED_NAMES`) and then removed.

Rejections and failures are labelled by the error's stable `reason`
(`serving.errors`), never by its class name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

ENGINE_STATS_INTERVAL_S = 2.0

TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
ITL_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
E2E_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
QUEUE_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0]
# The wait in our fair queue (serving/api/fair_queue.py): 0 for most requests (the first bucket), fine
# steps up to 100 ms (where it shows in a TTFT of tens of ms), then up to the 30 s a request may wait.
ADMISSION_BUCKETS = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
]  # fmt: skip

# name in code -> name on Ray's Prometheus endpoint (histograms add _bucket/_sum/_count).
# Ray prefixes custom metrics with `ray_` on export; the dashboard and its test use these.
METRIC_NAMES = {
    "requests": "ray_serving_requests_total",
    "rejections": "ray_serving_rejections_total",
    "ttft": "ray_serving_ttft_seconds",
    "tpot": "ray_serving_tpot_seconds",
    "e2e": "ray_serving_e2e_latency_seconds",
    "queue_wait": "ray_serving_queue_wait_seconds",
    "admission_wait": "ray_serving_admission_wait_seconds",
    "prompt_tokens": "ray_serving_prompt_tokens_total",
    "prompt_cached_tokens": "ray_serving_prompt_cached_tokens_total",
    "completion_tokens": "ray_serving_completion_tokens_total",
    "routed": "ray_serving_routed_requests_total",
    "in_flight": "ray_serving_in_flight",
    "engine": "ray_serving_engine_{stat}",
    "kv_cache_usage": "ray_serving_engine_kv_cache_usage_ratio",
    "lora": "ray_serving_lora_{stat}_total",
}

# The names of 0.x, exported beside their replacements until the next release (docs/observability.md).
DEPRECATED_NAMES = {
    "ray_serving_itl_seconds": "ray_serving_tpot_seconds (per request); per token: vllm:inter_token_latency_seconds",
    "ray_serving_engine_kv_cache_usage": "ray_serving_engine_kv_cache_usage_ratio",
    "ray_serving_engine_prefix_cache_queries": "vllm:prefix_cache_queries_total",
    "ray_serving_engine_prefix_cache_hits": "vllm:prefix_cache_hits_total",
    "ray_serving_engine_lora_loads": "ray_serving_lora_loads_total",
    "ray_serving_engine_lora_hits": "ray_serving_lora_hits_total",
    "ray_serving_engine_lora_evictions": "ray_serving_lora_evictions_total",
    "ray_serving_engine_lora_failures": "ray_serving_lora_failures_total",
}

# The engine's cumulative LoRA counts (since the replica started), exported as counters.
LORA_COUNTERS = ("loads", "hits", "evictions", "failures")

ENGINE_GAUGES = (
    "running",
    "waiting",
    "kv_cache_usage",
    "prefix_cache_queries",
    "prefix_cache_hits",
    # LoRA adapters (models[].lora): loaded now, and since the start loads, hits, evictions, failed loads
    "lora_loaded",
    "lora_loads",
    "lora_hits",
    "lora_evictions",
    "lora_failures",
)


@dataclass(frozen=True, slots=True)
class GenerationDone:
    """One generation that ran to its end, as measured where the engine runs (seconds, tokens)."""

    model: str
    ttft: float | None
    itl: float | None  # the request's mean gap per output token (exported as TPOT)
    e2e: float
    queue_wait: float | None
    prompt_tokens: int
    completion_tokens: int
    tenant: str = "anonymous"  # whose request (auth.tenants[].name; "default": a key of no tenant)
    # Of `prompt_tokens`, those the engine found in its prefix cache (None: the engine does not say).
    cached_tokens: int | None = None


class Metrics(Protocol):
    """The observations the request path makes (one implementation per backend).

    The bodies here do nothing, so an implementation that subclasses it may
    leave out what it does not record (`NullMetrics` records nothing).
    """

    def request_done(
        self, model: str, route: str, status: int, reason: str | None = None, tenant: str = "anonymous"
    ) -> None:
        """One finished HTTP request (counted where it entered); `reason` (an error's stable label) when it was
        refused or failed; `tenant`: whose it was."""
        return None

    def generation_done(self, done: GenerationDone) -> None:
        """One generation that ran to its end."""
        return None

    def admission_waited(self, model: str, tenant: str, seconds: float) -> None:
        """One request's wait for a place in the engine, in the model's fair queue (serving/api/fair_queue.py),
        from its arrival there to its place (0: at once) or to its refusal (shed, displaced, timed out, drained,
        its client gone): once per request that asked the queue for a place."""
        return None

    def request_placed(self, model: str, placement: str) -> None:
        """Where the entry point placed a request: `local`, `forwarded` or `fallback` (a Serve handle)."""
        return None

    def engine_stats(self, model: str, replica: str, stats: dict[str, float], in_flight: int) -> None:
        """The engine's own counters and the replica's requests in flight (a periodic snapshot)."""
        return None


class NullMetrics(Metrics):
    """Records nothing: the default where no metrics backend is wired in."""
