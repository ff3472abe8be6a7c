"""The ingress deployment: the OpenAI app behind Ray Serve's proxy, one handle per model.

Handles are looked up by deployment name inside the replica (the FastAPI app is
pickled to the replica, so it cannot hold handles made at build time). The LLM
deployments are still bound as arguments so they belong to this app's graph.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray import serve

from serving.api.app import build_api
from serving.api.backend import ModelRegistry
from serving.api.relay import RELAYS
from serving.config import AppConfig
from serving.deployments import serve_stop
from serving.deployments.budget_holder import RayLedger
from serving.deployments.handle_backend import HandleBackend
from serving.deployments.metrics import RayMetrics
from serving.deployments.response_store import RayResponseStore


def ingress_deployment(cfg: AppConfig, created: int | None = None) -> Any:
    """The ingress class for the app's models (each reached through its LLM deployment).

    `created`: the models' creation time in /v1/models, the deploy's (as the LLM replicas' direct ingress says).
    """
    backends = [HandleBackend(m.id, m.deployment_name) for m in cfg.models]
    api = build_api(
        ModelRegistry.for_models(backends, created if created is not None else int(time.time()), cfg.models),
        cfg.auth,
        cfg.limits,
        cfg.observability,
        metrics=RayMetrics(),  # makes its Ray instruments in the ingress replica, on first use
        response_store=RayResponseStore(cfg.responses),  # the app's, found from the replica's context
        budget_ledger=RayLedger(),  # the app's, found from the replica's context
    )

    # As long as the longest of the models' replicas: the streams relayed through a stopping
    # ingress replica (a drained node's) get the drain time their model's replica would give them.
    graceful_s = max(m.deployment.graceful_shutdown_timeout_s for m in cfg.models)

    @serve.deployment(
        name="ingress",
        ray_actor_options={"num_cpus": cfg.ingress.num_cpus},
        num_replicas=cfg.ingress.num_replicas,
        max_ongoing_requests=1024,
        graceful_shutdown_timeout_s=graceful_s,
    )
    @serve.ingress(api)
    class Ingress:
        async def __init__(self, *llm_deployments: Any) -> None:  # type: ignore[misc]  # Serve awaits it
            # Serve waits for this replica's ongoing requests until its force-kill: end the
            # streams it relays with an error event and [DONE] before then (handle_backend.py).
            drain_s = serve_stop.drain_from_stop_s(graceful_s)
            self._stop_watch = asyncio.get_running_loop().create_task(serve_stop.watch(lambda: RELAYS.drain(drain_s)))
            # Tracing (off by default) on in this replica now, not at its first request.
            from serving.observability import tracing

            tracing.configure(cfg.observability.tracing)

    return Ingress
