"""Request routers, chosen per model by `router:` in the config.

* `power_of_two` (default): Ray Serve's own PowerOfTwoChoicesRequestRouter.
* `round_robin`: `serving.routing.round_robin.RoundRobinRouter`, a baseline.
* `prefix_aware`: `serving.routing.prefix_router.PrefixAwareRouter`, sticky
  per prompt prefix (so the replica's prefix cache hits) with a load gate.

The decision logic lives in `serving.routing.policy` (pure, no Ray).
"""

from __future__ import annotations

from typing import Any

ROUTER_CLASSES: dict[str, str | None] = {
    "power_of_two": None,  # Serve's default
    "round_robin": "serving.routing.round_robin:RoundRobinRouter",
    "prefix_aware": "serving.routing.prefix_router:PrefixAwareRouter",
}


def request_router_config(model) -> Any | None:
    """The `request_router_config` for a model's deployment, or None for Serve's default."""
    path = ROUTER_CLASSES[model.router]
    if path is None:
        return None
    from ray.serve.config import RequestRouterConfig

    kwargs: dict[str, Any] = {}
    if model.router == "prefix_aware":
        kwargs = {
            "imbalance_threshold": model.router_imbalance_threshold,
            "prefix_chars": model.router_prefix_chars,
            "load_factor": model.router_load_factor,
        }
    return RequestRouterConfig(request_router_class=path, request_router_kwargs=kwargs)
