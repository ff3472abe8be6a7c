"""The Serve application builder: `serving.deployments.app:build_app` is the `import_path` of every config.

It turns the validated config into one LLM-server deployment per model (with
its resources, queue bounds, autoscaling and router) and the proxy path's
ingress deployment bound to them.
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from serving.api.security import load_api_keys
from serving.config import AppConfig, IngressConfig, ModelConfig, parse_app_args
from serving.deployments.autoscaling import autoscaling_config
from serving.deployments.ingress import ingress_deployment
from serving.deployments.llm_server import LLMServer
from serving.deployments.registry import deploy_created, forward_token
from serving.engine.factory import check_engine_args
from serving.routing import request_router_config


def replica_env(model: ModelConfig) -> dict[str, str]:
    env = dict(model.env)
    if model.kv_cache_gib is not None:
        # vLLM on CPU otherwise asks for 92% of RAM and a second engine fails to start.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(model.kv_cache_gib)
    return env


def llm_deployment_options(model: ModelConfig, ingress: IngressConfig | None = None) -> dict[str, Any]:
    d = model.deployment
    ingress = ingress or IngressConfig()
    actor: dict[str, Any] = {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus}
    if d.memory_gib:
        actor["memory"] = int(d.memory_gib * 2**30)
    if d.resources:
        actor["resources"] = dict(d.resources)
    env = replica_env(model)
    if ingress.mode == "direct" and ingress.replica_niceness is not None:
        # Ray renices each worker to RAY_worker_niceness (15) when its core worker starts,
        # and the engine processes inherit it: under load the engine then loses the CPU to
        # Ray's agents and to anything else on the node (loadtests/PERFORMANCE.md,
        # "Replica niceness: Ray starts workers at nice 15").
        # In proxy mode Serve's proxy stays at 15, so the replica keeps Ray's default too.
        env.setdefault("RAY_worker_niceness", str(ingress.replica_niceness))
    if env:
        actor["runtime_env"] = {"env_vars": env}
    options = {
        "name": model.deployment_name,
        "ray_actor_options": actor,
        # Handle calls (the proxy path, another model's ingress) up to running + waiting reach the replica,
        # whose fair queue orders the waiting ones by class and tenant; past that, Serve's own queue (FIFO).
        "max_ongoing_requests": d.max_ongoing_requests + max(0, d.max_queued_requests),
        "max_queued_requests": d.max_queued_requests,
        "autoscaling_config": autoscaling_config(d.autoscaling),
        "graceful_shutdown_timeout_s": d.graceful_shutdown_timeout_s,
        "max_surge_percent": d.max_surge_percent,
        "health_check_period_s": d.health_check_period_s,
        "health_check_timeout_s": d.health_check_timeout_s,
    }
    if d.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = d.max_replicas_per_node
    router = request_router_config(model)
    if router is not None:
        options["request_router_config"] = router
    return options


def build_from_config(cfg: AppConfig) -> Application:
    peers = {m.id: m.deployment_name for m in cfg.models}
    app_args = cfg.model_dump()
    # One creation time for /v1/models on every ingress (each replica's direct one, Serve's proxy
    # path), kept across redeploys: it is a constructor argument, so a new value replaced every replica.
    created = deploy_created()
    token = forward_token() if cfg.ingress.mode == "direct" and cfg.ingress.routing == "request" else None
    llm_apps = [
        serve.deployment(LLMServer)
        .options(**llm_deployment_options(m, cfg.ingress))
        .bind(m.model_dump(), app_args, peers, created=created, forward_token=token)
        for m in cfg.models
    ]
    return ingress_deployment(cfg, created).bind(*llm_apps)


def build_app(args: dict[str, Any]) -> Application:
    cfg = parse_app_args(args)
    check_engine_args(cfg, "application args")
    # Fail closed and early: keys that no replica could load stop `serve run` / the deploy
    # here, with the reason, instead of as replicas failing one after another.
    load_api_keys(cfg.auth)
    return build_from_config(cfg)
