"""Replica autoscaling that sees every request, including those of the direct ingress.

Serve's default policy counts only requests that pass through Serve (its proxy
and handles). In `direct` mode clients reach the replicas' own HTTP servers, so
each LLM-server replica reports its requests in flight (`record_autoscaling_stats`)
and this policy scales on them. Serve wraps custom policies with the config's
min/max bounds and upscale/downscale delays, so those settings keep their meaning.
"""

from __future__ import annotations

from typing import Any

from serving.config import AutoscalingConfig

POLICY = "serving.deployments.autoscaling:in_flight_policy"
IN_FLIGHT = "in_flight"


def in_flight_policy(ctx) -> tuple[float, dict[str, Any]]:
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    per_replica = (ctx.aggregated_metrics or {}).get(IN_FLIGHT) or {}
    reported = sum(per_replica.values())
    # Requests still queued at handles are in no replica yet; Serve counts those.
    total = max(reported, ctx.total_num_requests)
    return total / ctx.config.get_target_ongoing_requests(), {}


def autoscaling_config(cfg: AutoscalingConfig) -> dict[str, Any]:
    """Serve's `autoscaling_config` for a model: its bounds and delays, scaled on requests in flight."""
    return {**cfg.model_dump(exclude_none=True), "policy": {"policy_function": POLICY}}
