"""`RayMetrics`: the `serving.observability.metrics.Metrics` interface on Ray's metrics API.

Ray exports these on every node's Prometheus endpoint (names in `METRIC_NAMES`).
The Ray metric objects are created lazily in the process that records, so a
`RayMetrics` made at build time can be pickled into a replica.

vLLM's own metrics do not go through Ray (its names would lose their `vllm:`):
`export_engine_stats` also starts the replica's part of `engine_metrics`, which
serves them under their own names.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Callable

from ray.util import metrics as ray_metrics

from serving.deployments import engine_metrics
from serving.observability.metrics import (
    ADMISSION_BUCKETS,
    E2E_BUCKETS,
    ENGINE_GAUGES,
    ENGINE_STATS_INTERVAL_S,
    ITL_BUCKETS,
    LORA_COUNTERS,
    QUEUE_BUCKETS,
    TTFT_BUCKETS,
    GenerationDone,
    Metrics,
)

logger = logging.getLogger(__name__)


class _RayInstruments:
    def __init__(self) -> None:
        self.requests = ray_metrics.Counter(
            "serving_requests",
            description="Requests by model, route, HTTP status and tenant.",
            tag_keys=("model", "route", "status", "tenant"),
        )
        self.rejections = ray_metrics.Counter(
            "serving_rejections",
            description="Requests refused or failed, by the error's reason.",
            tag_keys=("model", "reason", "tenant"),
        )
        self.ttft = ray_metrics.Histogram(
            "serving_ttft_seconds",
            description="Time to first token, measured where the engine runs.",
            boundaries=TTFT_BUCKETS,
            tag_keys=("model",),
        )
        self.tpot = ray_metrics.Histogram(
            "serving_tpot_seconds",
            description="Time per output token: each request's mean gap between its output tokens, observed once "
            "per request (per token: vLLM's vllm:inter_token_latency_seconds).",
            boundaries=ITL_BUCKETS,
            tag_keys=("model",),
        )
        self.itl_deprecated = ray_metrics.Histogram(
            "serving_itl_seconds",
            description="Deprecated: ray_serving_tpot_seconds under its former name (each request's mean gap per "
            "output token); removed in the next release.",
            boundaries=ITL_BUCKETS,
            tag_keys=("model",),
        )
        self.e2e = ray_metrics.Histogram(
            "serving_e2e_latency_seconds",
            description="Request latency from arrival to last token.",
            boundaries=E2E_BUCKETS,
            tag_keys=("model",),
        )
        self.queue_wait = ray_metrics.Histogram(
            "serving_queue_wait_seconds",
            description="Time a request waited in the engine's queue before it was scheduled.",
            boundaries=QUEUE_BUCKETS,
            tag_keys=("model",),
        )
        self.admission_wait = ray_metrics.Histogram(
            "serving_admission_wait_seconds",
            description="Time a request waited in the replica's fair queue for a place in the engine (0: at once), "
            "by tenant; requests refused there (shed, timed out) are observed with the time they waited.",
            boundaries=ADMISSION_BUCKETS,
            tag_keys=("model", "tenant"),
        )
        self.prompt_tokens = ray_metrics.Counter(
            "serving_prompt_tokens", description="Prompt tokens, by model and tenant.", tag_keys=("model", "tenant")
        )
        self.prompt_cached_tokens = ray_metrics.Counter(
            "serving_prompt_cached_tokens",
            description="Prompt tokens the engine found in its prefix cache (a response's "
            "usage.prompt_tokens_details.cached_tokens), by model and tenant.",
            tag_keys=("model", "tenant"),
        )
        self.completion_tokens = ray_metrics.Counter(
            "serving_completion_tokens",
            description="Completion tokens, by model and tenant.",
            tag_keys=("model", "tenant"),
        )
        self.routed = ray_metrics.Counter(
            "serving_routed_requests",
            description="Requests placed by the entry point that received them: served there (local), "
            "forwarded to another replica, or through a Serve handle (fallback).",
            tag_keys=("model", "placement"),
        )
        self.in_flight = ray_metrics.Gauge(
            "serving_in_flight",
            description="Requests in flight per model and replica.",
            tag_keys=("model", "replica"),
        )
        self.engine = {
            stat: ray_metrics.Gauge(
                f"serving_engine_{stat}",
                description=f"The engine's own {stat.replace('_', ' ')} (per replica).",
                tag_keys=("model", "replica"),
            )
            for stat in ENGINE_GAUGES
        }
        self.kv_cache_usage = ray_metrics.Gauge(
            "serving_engine_kv_cache_usage_ratio",
            description="The engine's KV-cache use (0-1), per replica.",
            tag_keys=("model", "replica"),
        )
        self.lora = {
            stat: ray_metrics.Counter(
                f"serving_lora_{stat}",
                description=f"LoRA adapter {stat} since the replica started (models[].lora).",
                tag_keys=("model", "replica"),
            )
            for stat in LORA_COUNTERS
        }


_instruments: _RayInstruments | None = None
# (model, replica, stat) -> the engine's last cumulative count, which the counters were raised to.
_counted: dict[tuple[str, str, str], float] = {}


def _ray() -> _RayInstruments:
    global _instruments
    if _instruments is None:
        _instruments = _RayInstruments()
    return _instruments


class RayMetrics(Metrics):
    """Stateless handle on the process-wide Ray instruments (made on first use)."""

    def request_done(
        self, model: str, route: str, status: int, reason: str | None = None, tenant: str = "anonymous"
    ) -> None:
        m = _ray()
        m.requests.inc(1, tags={"model": model, "route": route, "status": str(status), "tenant": tenant})
        if reason:
            m.rejections.inc(1, tags={"model": model, "reason": reason, "tenant": tenant})

    def admission_waited(self, model: str, tenant: str, seconds: float) -> None:
        _ray().admission_wait.observe(seconds, tags={"model": model, "tenant": tenant})

    def request_placed(self, model: str, placement: str) -> None:
        _ray().routed.inc(tags={"model": model, "placement": placement})

    def generation_done(self, done: GenerationDone) -> None:
        m = _ray()
        tags = {"model": done.model}
        if done.ttft is not None:
            m.ttft.observe(done.ttft, tags=tags)
        if done.itl is not None:
            m.tpot.observe(done.itl, tags=tags)
            m.itl_deprecated.observe(done.itl, tags=tags)
        m.e2e.observe(done.e2e, tags=tags)
        if done.queue_wait is not None:
            m.queue_wait.observe(done.queue_wait, tags=tags)
        usage = {"model": done.model, "tenant": done.tenant}
        if done.prompt_tokens:
            m.prompt_tokens.inc(done.prompt_tokens, tags=usage)
        if done.cached_tokens:  # None: the engine does not say; 0: nothing to add
            m.prompt_cached_tokens.inc(done.cached_tokens, tags=usage)
        if done.completion_tokens:
            m.completion_tokens.inc(done.completion_tokens, tags=usage)

    def engine_stats(self, model: str, replica: str, stats: dict[str, float], in_flight: int) -> None:
        m = _ray()
        tags = {"model": model, "replica": replica}
        for stat, gauge in m.engine.items():
            if stat in stats:
                gauge.set(stats[stat], tags=tags)
        if "kv_cache_usage" in stats:
            m.kv_cache_usage.set(stats["kv_cache_usage"], tags=tags)
        for stat, counter in m.lora.items():
            value = stats.get(f"lora_{stat}")
            if value is None:
                continue
            increase = counted_increase((model, replica, stat), value)
            if increase:
                counter.inc(increase, tags=tags)
        m.in_flight.set(in_flight, tags=tags)


def counted_increase(key: tuple[str, str, str], value: float) -> float:
    """What a cumulative count rose by since the last snapshot (all of it the first time, or after a reset)."""
    last = _counted.get(key, 0.0)
    _counted[key] = value
    return value - last if value >= last else value


def replica_tag() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id.unique_id)
    except Exception:
        return f"pid-{os.getpid()}"


async def export_engine_stats(
    metrics: Metrics,
    model_id: str,
    stats: Callable[[], Any],
    in_flight: Callable[[], int],
    stop: asyncio.Event,
    host: str | None = None,
) -> None:
    """Refresh the per-replica gauges from the engine's own counters until `stop` is set.

    With `host` (where the node's engine-metrics port listens), a replica whose engine
    records vLLM's metrics also serves them (`engine_metrics`) for as long.
    """
    replica = replica_tag()
    export = start_engine_metrics(replica, model_id, host) if host is not None else None
    try:
        while not stop.is_set():
            try:
                metrics.engine_stats(model_id, replica, await stats(), in_flight())
            except Exception:  # metrics must never take a replica down
                logger.debug("engine stats export failed", exc_info=True)
            try:
                await asyncio.wait_for(stop.wait(), ENGINE_STATS_INTERVAL_S)
            except TimeoutError:
                pass
    finally:
        if export is not None:
            export.stop()  # returns at once: the servers shut down on a thread, off this event loop


def start_engine_metrics(replica: str, model_id: str, host: str) -> engine_metrics.EngineMetricsExport | None:
    """This replica's part of the node's vLLM metrics endpoint, when vLLM runs here and the port is on."""
    try:
        port = engine_metrics.node_port()
        if port <= 0 or not engine_metrics.has_families():
            return None
        import ray

        node_id = ray.get_runtime_context().get_node_id()
        return engine_metrics.EngineMetricsExport(replica, model_id, node_id, host, port)
    except Exception:  # metrics must never take a replica down
        logger.warning("vLLM's metrics are not exported from this replica", exc_info=True)
        return None
