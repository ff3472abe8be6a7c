"""The config: one strict pydantic tree for the `args` of a Serve application.

The same models validate `serve run configs/*.yaml` (via `serving.deployments.app:build_app`),
`python -m serving check FILE`, the Kubernetes renderer and the tests. Unknown
keys are errors everywhere, so a misspelled option fails at start-up instead of
being ignored. This module imports nothing else of the project: the engine
layer checks `engine_args` against vLLM (`serving.engine.factory.check_engine_args`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUILTIN_PREFIX = "builtin:"
# The `import_path` of every Serve application built from this config.
IMPORT_PATH = "serving.deployments.app:build_app"


# Ray's own resources: set through num_cpus, num_gpus and memory_gib, never as custom ones.
RAY_BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AutoscalingConfig(Strict):
    """Ray Serve replica autoscaling for one model (passed to Serve's autoscaling_config)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(16, gt=0)
    upscale_delay_s: float = Field(10.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    metrics_interval_s: float = Field(2.0, gt=0)
    look_back_period_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (self.min_replicas <= self.initial_replicas <= self.max_replicas):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class DeploymentConfig(Strict):
    """Resources and queueing of one model's LLM-server deployment."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_gib: float | None = Field(None, gt=0)
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each replica needs, e.g. {pool-a: 1}: only nodes started with "
        "them (`ray start --resources`) take its replicas.",
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="At most this many of the model's replicas on one node (spread for availability)."
    )
    max_ongoing_requests: int = Field(256, ge=1)
    max_queued_requests: int = Field(512, ge=-1)
    autoscaling: AutoscalingConfig = AutoscalingConfig()
    graceful_shutdown_timeout_s: float = Field(30.0, ge=0)
    max_surge_percent: int = Field(
        100,
        ge=0,
        le=100,
        description="Extra replicas during a redeploy: >0 keeps old replicas serving until their "
        "replacements are ready (needs spare resources); 0 stops old replicas first.",
    )
    health_check_period_s: float = Field(5.0, gt=0)
    health_check_timeout_s: float = Field(30.0, gt=0)

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name in RAY_BUILTIN_RESOURCES:
                raise ValueError(f"{name!r} is not a custom resource: use num_cpus, num_gpus or memory_gib")
            if not name or amount <= 0:
                raise ValueError(f"resource {name!r}: a non-empty name and an amount > 0")
            if amount > 1 and not float(amount).is_integer() or round(amount, 4) != amount:
                raise ValueError(f"resource {name!r}: Ray takes whole amounts, or fractions of 1 in steps of 0.0001")
        return v

    @field_validator("max_queued_requests")
    @classmethod
    def _queue_bound(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_queued_requests must be -1 (no limit) or a positive integer, as Ray Serve requires")
        return v

    @model_validator(mode="after")
    def _target_fits(self) -> DeploymentConfig:
        target = self.autoscaling.target_ongoing_requests
        if target > self.max_ongoing_requests:
            raise ValueError(
                f"autoscaling.target_ongoing_requests ({target}"
                f"{', the default' if 'target_ongoing_requests' not in self.autoscaling.model_fields_set else ''}) "
                f"must be <= max_ongoing_requests ({self.max_ongoing_requests}): a replica could never reach its target"
            )
        return self


# An adapter's name: the part of its model id after `<base id>:`, and its folder's name in a store.
ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ADAPTER_SEPARATOR = ":"


def adapter_name(base_id: str, model: str) -> str | None:
    """The adapter name in model id `model` if it names one of `base_id`'s (`<base id>:<name>`), else None."""
    prefix = base_id + ADAPTER_SEPARATOR
    return model[len(prefix) :] if model.startswith(prefix) and len(model) > len(prefix) else None


# Stores an adapter can load from on first use. An object store (s3://bucket/prefix, gs://...) has the same
# shape (`<store>/<name>/adapter_config.json`) and is not served yet: nothing here can reach one.
ADAPTER_STORE_SCHEMES = ("file://",)


class LoraConfig(Strict):
    """LoRA adapters of one base model (vLLM multi-LoRA), each served as model `<base id>:<name>`.

    `adapters`: a static list, name -> source (a local folder, `file:///path/to/folder`, or
    `builtin:tiny-lora/<seed>` for the tiny Llama, built offline). `store`: a folder or `file://` URI
    whose sub-folder `<name>` is adapter `<name>`, loaded on its first request. Every replica keeps
    up to `max_loaded` adapters loaded (least recently used evicted) and runs up to `max_loras` of
    them in one batch (serving/engine/adapters.py).
    """

    adapters: dict[str, str] = Field(default_factory=dict, description="name -> folder, file:// URI or builtin")
    store: str | None = Field(
        None, description="folder or file:// URI of adapters loaded on first use (<store>/<name>/)"
    )
    max_loras: int = Field(4, ge=1, description="adapters in one engine batch (vLLM max_loras)")
    max_loaded: int = Field(16, ge=1, description="adapters kept loaded per replica, least recently used evicted")
    max_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] = Field(
        16, description="the largest LoRA rank accepted (vLLM's max_lora_rank, one of its sizes)"
    )

    @field_validator("adapters")
    @classmethod
    def _names(cls, v: dict[str, str]) -> dict[str, str]:
        for name, source in v.items():
            if not ADAPTER_NAME.fullmatch(name):
                raise ValueError(f"adapter name {name!r}: letters, digits, . _ - (at most 64), starting alphanumeric")
            if not source:
                raise ValueError(f"adapter {name!r}: an empty source")
            _check_adapter_source(source, f"adapter {name!r}")
        return v

    @field_validator("store")
    @classmethod
    def _store(cls, v: str | None) -> str | None:
        if v is not None:
            if v.startswith(BUILTIN_PREFIX):
                raise ValueError("a store is a folder or a file:// URI, not a builtin")
            _check_adapter_source(v, "store")
        return v

    @model_validator(mode="after")
    def _loras_fit(self) -> LoraConfig:
        if self.max_loras > self.max_loaded:
            raise ValueError(f"max_loras ({self.max_loras}) must be <= max_loaded ({self.max_loaded})")
        return self


def _check_adapter_source(source: str, what: str) -> None:
    if source.startswith(BUILTIN_PREFIX):
        if not re.fullmatch(rf"{BUILTIN_PREFIX}tiny-lora/[a-z0-9][a-z0-9_-]{{0,63}}", source):
            raise ValueError(f"{what}: the builtin adapters are builtin:tiny-lora/<name> (lowercase, digits, _ -)")
        return
    scheme = re.match(r"([a-z][a-z0-9+.-]*)://", source)
    if scheme and scheme.group(0) not in ADAPTER_STORE_SCHEMES:
        raise ValueError(
            f"{what}: {scheme.group(0)} is not served yet (a folder or file:// URI is; an object store "
            "would be synced to a folder)"
        )
    if source.startswith("file://") and not source.startswith("file:///"):
        raise ValueError(f"{what}: a file:// URI names an absolute path (file:///...)")


class ModelConfig(Strict):
    id: str = Field(min_length=1, max_length=128, description="The public model id clients send as `model`.")
    source: str = Field(
        f"{BUILTIN_PREFIX}tiny-llama",
        description="`builtin:tiny-llama` (built offline on first use), a local folder, or a hub id.",
    )
    engine: str = Field(
        "vllm", description="`vllm`, `simulator`, or `package.module:Class` implementing serving.engine.base.Engine."
    )
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vLLM AsyncEngineArgs fields.")
    # vLLM reads VLLM_CPU_KVCACHE_SPACE with int(): a fractional value would crash the engine.
    kv_cache_gib: int | None = Field(
        None, ge=1, description="CPU only: KV cache size in GiB per replica (sets VLLM_CPU_KVCACHE_SPACE)."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the replicas.")
    colocate_engine_core_at: int | None = Field(
        12,
        ge=0,
        description="CPU hosts: from this many requests in flight in a replica, bind vLLM's scheduler "
        "process to its worker's core, so their lockstep spins on one core, not two; released at half of it. "
        "0 = always, null = never (serving/deployments/node_tuning.py). No effect on GPU.",
    )
    task: Literal["generate", "embed"] = Field(
        "generate",
        description="`generate`: chat and completions. `embed`: /v1/embeddings, on vLLM's pooling runner "
        "(`builtin:tiny-embed` is a small embedding model built offline).",
    )
    tool_parser: str | None = Field(
        None,
        description="vLLM's tool-call parser for the model's output (`hermes` for Qwen2.5 and the builtin tiny "
        "model, `llama3_json`, `mistral`, ...): needed for `tool_choice: auto`; `required` and named functions "
        "work without one (structured output).",
    )
    lora: LoraConfig | None = Field(
        None, description="LoRA adapters served on this base model, each as model `<id>:<name>` (vLLM only)."
    )
    deployment: DeploymentConfig = DeploymentConfig()
    router: Literal["power_of_two", "round_robin", "prefix_aware"] = Field(
        "power_of_two",
        description="Request routing among the model's replicas (proxy path and handle calls); see serving/routing.",
    )
    router_imbalance_threshold: int = Field(
        2,
        ge=0,
        description="prefix_aware: leave the sticky replica when its queue exceeds the least-loaded one's by more...",
    )
    router_load_factor: float = Field(
        1.5, ge=1, description="prefix_aware: ...and would exceed this many times the mean queue."
    )
    router_prefix_chars: int = Field(
        512, ge=1, description="prefix_aware: how many leading prompt characters form the key."
    )

    @field_validator("id")
    @classmethod
    def _id_chars(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:-]*", v):
            raise ValueError("model id may use letters, digits and . _ / : -")
        return v

    @field_validator("engine")
    @classmethod
    def _engine_kind(cls, v: str) -> str:
        if v not in ("vllm", "simulator") and not re.fullmatch(r"[\w.]+:\w+", v):
            raise ValueError("engine must be 'vllm', 'simulator' or 'package.module:Class'")
        return v

    @field_validator("engine_args")
    @classmethod
    def _no_model_in_engine_args(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in ("model", "served_model_name"):
            if key in v:
                raise ValueError(f"engine_args.{key} is set from the model's `source` and `id`; remove it")
        return v

    @model_validator(mode="after")
    def _embed_has_no_tools(self) -> ModelConfig:
        if self.task == "embed" and self.tool_parser is not None:
            raise ValueError("tool_parser: an embedding model (task: embed) generates no text to parse; remove it")
        if self.task == "embed" and self.lora is not None:
            raise ValueError("lora: adapters are served on generating models (task: generate)")
        if self.lora is not None and self.engine not in ("vllm", "simulator"):
            raise ValueError("lora: served by the vllm and simulator engines only (a custom engine may ignore them)")
        if self.lora is not None:
            clash = sorted({"enable_lora", "max_loras", "max_cpu_loras", "max_lora_rank"} & set(self.engine_args))
            if clash:
                raise ValueError(f"engine_args {clash} are set from `lora` (max_loras, max_loaded, max_rank)")
        return self

    def adapter_id(self, name: str) -> str:
        """The model id clients send for this base model's adapter `name`."""
        return f"{self.id}{ADAPTER_SEPARATOR}{name}"

    @property
    def deployment_name(self) -> str:
        return "llm-" + re.sub(r"[^A-Za-z0-9-]", "-", self.id).lower()


class ResponsesConfig(Strict):
    """Stored responses of /v1/responses (`store: true`, OpenAI's default): shared by every replica of the app."""

    ttl_s: float = Field(3600.0, gt=0, description="how long a stored response can be read or continued")
    max_bytes: int = Field(
        256 << 20, ge=1 << 20, description="all stored responses of the app, encoded; oldest dropped"
    )
    max_record_bytes: int = Field(
        8 << 20, ge=1 << 10, description="one stored response with its conversation; a bigger one is not kept"
    )

    @model_validator(mode="after")
    def _record_fits(self) -> ResponsesConfig:
        if self.max_record_bytes > self.max_bytes:
            raise ValueError(f"max_record_bytes ({self.max_record_bytes}) must be <= max_bytes ({self.max_bytes})")
        return self


class IngressConfig(Strict):
    """How HTTP reaches the models.

    `direct`: every LLM-server replica serves the OpenAI API itself on `port`
    (SO_REUSEPORT, so replicas on a node share it); no Ray hop per token.
    `proxy`: Ray Serve's proxy -> ingress deployment -> LLM-server deployment.
    Both run the same FastAPI app; see loadtests/PERFORMANCE.md for the cost.
    """

    mode: Literal["direct", "proxy"] = "direct"
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    routing: Literal["request", "connection"] = Field(
        "request",
        description="direct mode: `request` places every request on a replica of its model by prompt prefix, "
        "load and health, forwarding it over HTTP when that replica is another (serving/routing/scheduler.py); "
        "`connection` serves each request where its connection landed (the kernel's SO_REUSEPORT spread) "
        "and reaches other models through Serve handles.",
    )
    peer_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="direct mode, request routing: the port of each replica's own listener, which entry points "
        "forward to (0: any free port; a fixed one allows one replica per node).",
    )
    num_cpus: float = Field(0.1, ge=0, description="CPU reservation of the ingress deployment (proxy mode).")
    num_replicas: int = Field(
        1,
        ge=1,
        description="Replicas of the ingress deployment (the proxy path), spread over nodes: with one, "
        "losing its node cuts every proxy-path request until Serve replaces it.",
    )
    deprioritize_ray_control_plane: bool = Field(
        True,
        description="Replicas renice Ray's background processes on their node (nice +10) so they do not "
        "take CPU from the engine under load (serving/deployments/node_tuning.py).",
    )
    replica_niceness: int | None = Field(
        0,
        ge=0,
        le=19,
        description="direct mode: the niceness of the LLM-server replica and its engine "
        "processes. Ray starts every worker at nice 15 (RAY_worker_niceness), below its own agents and any "
        "client on the node; in direct mode the replica is the whole data path. null keeps Ray's default.",
    )
    # The direct ingress's HTTP server faces clients itself (SECURITY.md, "The direct ingress's HTTP server").
    max_connections: int = Field(1024, ge=1, description="direct mode: open connections per replica; more are closed")
    max_header_bytes: int = Field(65_536, ge=1024, description="direct mode: request line and headers; more: 431")
    max_headers: int = Field(100, ge=8, description="direct mode: header fields per request; more: 431")
    header_timeout_s: float = Field(10.0, gt=0, description="direct mode: to receive a request's headers; then 408")
    body_timeout_s: float = Field(30.0, gt=0, description="direct mode: silence allowed while a body arrives; then 408")
    write_timeout_s: float = Field(
        30.0, gt=0, description="direct mode: a response left unread this long is dropped and its request cancelled"
    )


# Priority classes of tenants: under overload a replica serves a higher class first, and sheds a lower one first.
PRIORITIES = {"high": 2, "normal": 1, "low": 0}
TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


class TenantConfig(Strict):
    """A team using the API: its keys, what it may use, its budgets (cluster-wide) and its share under overload.

    Keys come from the tenant's own secret (an environment variable, comma-separated,
    and/or a mounted file, one per line), fail closed as `auth`'s own sources do,
    and rotate the same way. `models` are shell-style globs over model ids and
    adapter ids (`tiny-llama`, `tiny-llama:*`, `*`). The budgets are per tenant,
    shared by all its keys, and hold across every replica and node
    (serving/api/budgets.py).
    """

    name: str = Field(description="[a-z0-9][a-z0-9._-]*: the `tenant` label of metrics and log lines")
    keys_env: str | None = None
    keys_file: str | None = None
    models: list[str] = Field(default_factory=lambda: ["*"], min_length=1, description="globs of allowed model ids")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(
        None, ge=1, description="reserved per request: prompt + n x max_tokens (omitted: the rest of the context)"
    )
    max_concurrent_requests: int | None = Field(None, ge=1, description="its requests in progress, cluster-wide")
    priority: Literal["high", "normal", "low"] = Field(
        "normal", description="under overload a higher class is served first and a lower one shed first"
    )
    weight: float = Field(1.0, gt=0, le=1000, description="its share against tenants of its class when saturated")
    on_budget_unreachable: Literal["closed", "open"] = Field(
        "closed",
        description="when the cluster's budget holder cannot be reached: closed refuses (503), "
        "open serves under the limits applied per replica",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not TENANT_NAME.fullmatch(v):
            raise ValueError(f"tenant name {v!r}: lowercase letters, digits, '.', '_', '-', at most 63")
        if v in ("default", "anonymous"):
            raise ValueError(f"tenant name {v!r} is the label of keys of no tenant / of an open API; choose another")
        return v

    @model_validator(mode="after")
    def _a_source(self) -> TenantConfig:
        if not (self.keys_env or self.keys_file):
            raise ValueError(f"tenant {self.name!r} needs keys_env or keys_file")
        return self


class AuthConfig(Strict):
    """API keys: from an environment variable (comma-separated) and/or a mounted file (one per line).

    Keys of `tenants` belong to their tenant; the keys of `api_keys_env` /
    `api_keys_file` belong to no tenant, and each has the `limits` of its own.

    Fails closed: every key source named here must exist and hold at least one
    usable key, or the application refuses to start (serving/api/security.py,
    `load_api_keys`). To serve without keys, say so: `auth: open` (dev configs).
    Never put keys in configs/: in Kubernetes both come from a Secret (SECURITY.md).
    """

    mode: Literal["keys", "open"] = Field(
        "keys", description="keys: every /v1 request needs a key; open: none is checked (development only)."
    )
    api_keys_env: str | None = "SERVING_API_KEYS"
    api_keys_file: str | None = None
    key_file_check_s: float = Field(
        5.0, gt=0, description="how often the key file is checked for changes (keys rotate without a restart)"
    )
    tenants: list[TenantConfig] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _open_shorthand(cls, data: Any) -> Any:
        # `auth: open` is `auth: {mode: open}`; an open API names no key source.
        if data == "open":
            return {"mode": "open", "api_keys_env": None}
        if isinstance(data, dict) and data.get("tenants") and "api_keys_env" not in data:
            # With tenants, keys of no tenant are only those the config names.
            data = {**data, "api_keys_env": None}
        if isinstance(data, dict) and data.get("mode") == "open":
            if data.get("tenants"):
                raise ValueError("auth mode 'open' checks no keys, so it has no tenants")
            named = [k for k in ("api_keys_env", "api_keys_file") if data.get(k)]
            if named:
                raise ValueError(f"auth mode 'open' checks no keys, but the config names a key source: {named}")
            return {**data, "api_keys_env": None}
        return data

    @model_validator(mode="after")
    def _a_source(self) -> AuthConfig:
        if self.mode == "keys" and not (self.api_keys_env or self.api_keys_file or self.tenants):
            raise ValueError("auth mode 'keys' needs api_keys_env, api_keys_file or tenants (or say `auth: open`)")
        names = [t.name for t in self.tenants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tenant names must be unique; repeated: {dupes}")
        return self


class LimitsConfig(Strict):
    """Per-key rate limits (keys of no tenant; a tenant has its own), body size, request time and what one
    request may cost. Rate limits hold across the cluster: replicas lease quota from one budget holder
    (serving/api/budgets.py)."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(
        None, ge=1, description="reserved per request: prompt + n x max_tokens (omitted: the rest of the context)"
    )
    max_concurrent_requests_per_key: int | None = Field(
        None, ge=1, description="requests of one key in progress at once; more get 429"
    )
    max_body_bytes: int | None = Field(
        None,
        ge=1024,
        description="null: from the longest context of the app's models, 16 bytes a token + 64 KiB, at least 1 MB",
    )
    request_timeout_s: float = Field(600.0, gt=0)
    # What one request may cost (serving/api/cost.py): refused with a 400 before the engine.
    max_n: int = Field(16, ge=1, le=128, description="choices per request (OpenAI allows 128)")
    max_logprob_entries: int = Field(
        200_000, ge=1, description="with logprobs: n x max_tokens x (top_logprobs + 1); omitted max_tokens = context"
    )
    max_logprobs_per_token: int = Field(
        96, ge=1, description="with logprobs: n x (top_logprobs + 1), the entries each engine step adds"
    )
    max_embedding_tokens: int = Field(
        300_000, ge=1, description="tokens of all inputs of one /v1/embeddings request (OpenAI's cap); more is a 400"
    )
    max_output_tokens: int | None = Field(
        None, ge=1, description="n x max_tokens (omitted max_tokens = context); null: no cap beyond the context"
    )
    max_schema_bytes: int = Field(32_768, ge=256, description="a response_format JSON schema, encoded")
    max_schema_depth: int = Field(32, ge=2, description="nesting of a response_format JSON schema")
    on_budget_unreachable: Literal["closed", "open"] = Field(
        "closed",
        description="keys of no tenant, when the budget holder cannot be reached: closed refuses (503), open "
        "serves under these limits applied per replica (an open API always serves)",
    )
    budget_lease_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="a replica leases quota to last about this long at its own rate, and gives back what it "
        "has not used after this long idle",
    )


class TracingConfig(Strict):
    """OpenTelemetry tracing (off by default): spans exported over OTLP, W3C `traceparent` accepted."""

    enabled: bool = False
    endpoint: str = Field(
        "http://127.0.0.1:4317",
        min_length=1,
        description="the OTLP collector: http(s)://host:port (gRPC, port 4317) or .../v1/traces (HTTP/protobuf)",
    )
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    service_name: str = Field("serving", min_length=1, max_length=100)
    sample_ratio: float = Field(
        1.0, ge=0, le=1, description="share of new traces sampled; a caller's sampled `traceparent` is always kept"
    )


class ObservabilityConfig(Strict):
    """Request logs and tracing (metrics are always on: they cost one observation per request)."""

    access_log: Literal["file", "stderr", "off"] = "file"
    log_prompts: bool = Field(
        False, description="Put prompt text in the request log lines (off: prompts are user data)."
    )
    tracing: TracingConfig = TracingConfig()


class AppConfig(Strict):
    models: list[ModelConfig] = Field(min_length=1)
    ingress: IngressConfig = IngressConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    responses: ResponsesConfig = ResponsesConfig()

    @model_validator(mode="after")
    def _unique_ids(self) -> AppConfig:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"model ids must be unique; repeated: {dupes}")
        for m in self.models:
            clash = sorted(set(ids) & {m.adapter_id(name) for name in (m.lora.adapters if m.lora else {})})
            if clash:
                raise ValueError(f"adapter ids {clash} of model {m.id!r} are also model ids; rename one")
        names = [m.deployment_name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("two model ids map to the same deployment name; rename one")
        known = set(ids) | {m.adapter_id(a) for m in self.models for a in (m.lora.adapters if m.lora else {})}
        lora_bases = [m.id + ADAPTER_SEPARATOR for m in self.models if m.lora]
        for t in self.auth.tenants:
            for glob in t.models:
                if not fnmatch.filter(known, glob) and not glob.startswith(tuple(lora_bases)):
                    raise ValueError(f"auth.tenants[{t.name}].models: {glob!r} matches no model or adapter id")
        return self


class ConfigError(ValueError):
    pass


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the known names closest to a misspelt `name`, or ''."""
    scored = sorted(
        ((difflib.SequenceMatcher(None, name.lower(), k.lower()).ratio(), k) for k in set(known)), reverse=True
    )
    if not scored or scored[0][0] < 0.6:
        return ""
    # the best match, and any other as close (two names one edit away)
    close = sorted(k for score, k in scored if score >= scored[0][0] - 0.02)[:3]
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def _model_at(root: type[BaseModel], path: Sequence[int | str]) -> type[BaseModel] | None:
    """The config model that holds the keys found at `path` (an error's location) under `root`, if one does."""
    model: Any = root
    for part in path:
        if isinstance(part, int):  # a list item: the list's item type was taken already
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return None
        model = model.model_fields[part].annotation
        # unwrap `X | None`, list[X] and dict[str, X] to the model X they hold
        for _ in range(3):
            args = [a for a in typing.get_args(model) if a is not type(None)]
            if typing.get_origin(model) is dict and len(args) == 2:
                model = args[1]
            elif args and len(args) == 1:
                model = args[0]
            else:
                break
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def format_validation_error(exc: ValidationError, where: str, root: type[BaseModel] | None = None) -> str:
    """One line per error, with its key path; an unknown key gets the closest known names as a suggestion."""
    lines = [f"invalid config in {where}:"]
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            model = _model_at(root or AppConfig, err["loc"][:-1])
            hint = did_you_mean(key, model.model_fields) if model is not None else ""
            lines.append(f"  {loc}: unknown key '{key}'{hint}")
        else:
            lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_app_args(args: dict[str, Any], where: str = "application args") -> AppConfig:
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def load_serve_config(path: str | Path) -> dict[str, Any]:
    """Read a Serve config file and validate each application's args that use our app."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"invalid config in {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("applications"), list):
        raise ConfigError(f"invalid config in {path}: expected a Serve config with 'applications'")
    for i, app in enumerate(data["applications"]):
        if not isinstance(app, dict):
            raise ConfigError(f"invalid config in {path}: applications[{i}] must be a mapping")
        if is_our_app(app):
            parse_app_args(app.get("args") or {}, f"{path} (applications[{i}].args)")
    return data


def is_our_app(app: dict[str, Any]) -> bool:
    return str(app.get("import_path", "")).startswith(IMPORT_PATH.split(":")[0] + ":")


def app_configs(data: dict[str, Any]) -> list[AppConfig]:
    return [
        AppConfig.model_validate(app.get("args") or {})
        for app in data["applications"]
        if isinstance(app, dict) and is_our_app(app)
    ]
