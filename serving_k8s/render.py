"""Render KubeRay manifests, as Kustomize bases, from a Serve config file.

    python -m serving_k8s render configs/cluster.yaml --kind multi-node --model-cache pvc --base k8s/base/cluster
    python -m serving_k8s render configs/cluster.yaml --kind multi-node -o rayservice.yaml   # one file
    python -m serving_k8s render-all            # regenerate k8s/base/* (TARGETS) and k8s/monitoring
    python -m serving_k8s render-all --check    # exit 1 if a committed file is stale

Why generated: a RayService's pods are derived from the config (GPUs, CPUs,
memory, drain times), so they are computed here, not copied by hand. What users
change per cluster (namespace, image, nodes, tolerations, priority class, pull
secrets, storage class) is not: they set it with Kustomize in an overlay
(k8s/overlays/, k8s/examples/custom), so nobody edits Python constants or
generated files. No base holds a Secret or a Namespace, so `kubectl apply -k`
never overwrites the user's Secret (docs/laptop-to-cluster.md).

The config file is validated with `serving.config` first and embedded verbatim
as the RayService's `serveConfigV2`, so the cluster runs exactly the file that
`serve run` runs on a laptop. The pods are derived from it:

* One LLM replica per GPU worker pod. A replica reserves `num_gpus` GPUs, which
  must equal tensor_parallel_size x pipeline_parallel_size of its engine_args
  (vLLM's TP workers are local processes of the replica, see configs/cluster.yaml),
  and each worker pod gets exactly that many GPUs, plus CPUs and memory for the
  replica, the engine processes and Ray itself.
* The head runs Ray's control plane only (`num-cpus: "0"`): GCS, dashboard, the
  Serve controller and, with `--kind multi-node`, the autoscaler sidecar.
* `--kind single-gpu`: head + one GPU worker, no autoscaling. The same topology
  as multi-node (so the same Services and probes), and the head can share the
  GPU node (it tolerates the GPU taint) when that node is all there is.
* `--kind multi-node`: the KubeRay in-tree autoscaler adds GPU worker pods when
  Serve's autoscaler asks for replicas that do not fit, and removes idle ones.
* `--kind cpu`: head + one CPU worker, for a laptop cluster (kind): a CPU model
  (the tiny `builtin:` one, built into the CPU image), no GPU selector.
* `--kueue-queue Q`: the RayService is admitted by Kueue from LocalQueue Q.
  Kueue rejects `enableInTreeAutoscaling` on a queued RayService (unless its
  elastic-jobs feature gate is on), so this variant reserves a fixed worker
  group of max_replicas pods; Serve still scales replicas inside it.

In `ingress.mode: direct` every LLM replica serves the OpenAI API on
`ingress.port` itself, so clients should reach the worker pods on that port:
the rendered file also holds a Service `<name>-direct` for it, next to the
`<name>-serve-svc` that KubeRay creates for Serve's proxy (`http_options.port`).
Every object of an install is named after the RayService (`--name`): the direct
Service, the workers' PodDisruptionBudget `<name>-workers` and, with
`--model-cache pvc`, the claim `<name>-model-cache`; so installs of different
bases never share an object.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from serving import __version__
from serving.config import AppConfig, ModelConfig, app_configs
from serving.engine.factory import check_serve_config, workers_per_replica

REPO_ROOT = Path(__file__).resolve().parent.parent

# The image built from the Dockerfile; the tag follows the project version.
IMAGE_REPOSITORY = "registry.example.com/llm-serving"
RUN_AS_USER = 1000  # the Dockerfile's `ray` user
SECRET_NAME = "serving-secrets"  # created by the user: k8s/examples/serving-secrets.env
SECRET_KEYS = ("HF_TOKEN", "SERVING_API_KEYS")
# Auth fails closed: a pod without the API keys must not start (HF_TOKEN is needed only for gated models).
REQUIRED_SECRET_KEYS = frozenset({"SERVING_API_KEYS"})
API_KEYS_ENV = "SERVING_API_KEYS"
APP_LABEL = "llm-serving"
WORKER_COMPONENT = "llm-worker"
HEAD_COMPONENT = "ray-head"

# Ports. KubeRay finds Serve's proxy port by the container port named "serve"
# (for the serve Service and the workers' readiness probe) and exports metrics
# on the port named "metrics".
METRICS_PORT = 8080
DASHBOARD_PORT = 8265
GCS_PORT = 6379
CLIENT_PORT = 10001
DASHBOARD_AGENT_PORT = 52365  # KubeRay's raylet health check
# vLLM's own metrics (vllm:*) of every replica of a pod, on one port per pod
# (serving/deployments/engine_metrics.py; the renderer does not import the Ray layer).
ENGINE_METRICS_PORT = 8082
ENGINE_METRICS_PORT_ENV = "SERVING_ENGINE_METRICS_PORT"

# Pod sizing, in addition to what the replica reserves.
SYSTEM_CPUS = 2  # raylet, dashboard agent, Serve proxy, the ingress deployment (0.1)
SYSTEM_MEMORY_GIB = 4  # raylet, agent, proxy, engine-core process overhead
SHM_EXTRA_GIB = 1  # NCCL buffers in /dev/shm (tensor parallel)
WORKER_OBJECT_STORE_GIB = 2  # serving moves small objects; keep Ray's 30% default out of RAM
HEAD_OBJECT_STORE_GIB = 1
SCRATCH_GIB = 10  # GPU kinds: Ray's logs and session files on the container's filesystem
GIB = 2**30

# Nodes with NVIDIA GPUs: the label of NVIDIA's GPU feature discovery (GPU
# operator); the taint that GPU node pools usually carry.
GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class RenderError(ValueError):
    pass


@dataclass(frozen=True)
class Kind:
    name: str
    autoscaling: bool
    head_cpu: str
    head_memory: str
    head_on_gpu_node: bool
    model_cache_gib: int
    idle_timeout_s: int = 60
    gpu: bool = True
    # Worker pod sizing on top of what the replica reserves (see the constants above).
    system_cpus: int = SYSTEM_CPUS
    system_memory_gib: int = SYSTEM_MEMORY_GIB
    shm_extra_gib: int = SHM_EXTRA_GIB
    worker_object_store_gib: int = WORKER_OBJECT_STORE_GIB
    # The containers' own filesystem: Ray's session directory (/tmp/ray: logs, spilled
    # files) and pip/HF temp files, requested as ephemeral storage.
    scratch_gib: int = SCRATCH_GIB


KINDS = {
    # One GPU node: head + one worker with the GPU; nothing to scale.
    "single-gpu": Kind(
        "single-gpu", autoscaling=False, head_cpu="1", head_memory="4Gi", head_on_gpu_node=True, model_cache_gib=10
    ),
    # GPU worker pods added and removed by the KubeRay in-tree autoscaler. An idle
    # GPU pod is kept 2 minutes: a new one costs node provisioning plus model load.
    "multi-node": Kind(
        "multi-node",
        autoscaling=True,
        head_cpu="2",
        head_memory="8Gi",
        head_on_gpu_node=False,
        model_cache_gib=40,
        idle_timeout_s=120,
    ),
    # A laptop cluster (kind, minikube, k3d): head + one CPU worker running the tiny
    # model that the CPU image builds in (configs of `source: builtin:...`), about
    # 3 CPUs and 9 GiB in all. The worker's vLLM engine-core process gets a CPU of
    # its own; no GPU selector or toleration.
    "cpu": Kind(
        "cpu",
        autoscaling=False,
        head_cpu="500m",
        head_memory="2Gi",
        head_on_gpu_node=False,
        model_cache_gib=1,
        gpu=False,
        system_cpus=0,
        system_memory_gib=2,
        shm_extra_gib=0,
        worker_object_store_gib=1,
        scratch_gib=2,
    ),
}

# Where the worker pods keep the Hugging Face cache (HF_HOME of the Dockerfile).
#   emptydir:   a fresh emptyDir per pod (every new pod downloads the weights), its size
#               requested as ephemeral storage;
#   pvc:        a PersistentVolumeClaim <name>-model-cache rendered beside the RayService
#               (ReadWriteOnce for one worker pod, ReadWriteMany when there can be more):
#               the weights are downloaded once and survive pods;
#   claim:NAME: an existing claim holding the weights already, mounted read-only, with
#               HF_HUB_OFFLINE=1 (nothing is downloaded; the claim can be ReadOnlyMany).
MODEL_CACHE_MODES = ("emptydir", "pvc", "claim:NAME")
HF_HOME = "/home/ray/.cache/huggingface"


def check_model_cache(value: str) -> str | None:
    """The claim name of `claim:NAME`, None for emptydir / pvc; RenderError for anything else."""
    if value in ("emptydir", "pvc"):
        return None
    mode, _, claim = value.partition(":")
    if mode != "claim" or not DNS_1123_SUBDOMAIN.fullmatch(claim) or len(claim) > 253:
        raise RenderError(f"--model-cache must be one of {', '.join(MODEL_CACHE_MODES)}, not {value!r}")
    return claim


@dataclass(frozen=True)
class Target:
    """A committed Kustomize base (k8s/base/<variant>/) and how it is generated."""

    config: str
    kind: str
    output: str  # the base's directory: rayservice.yaml and kustomization.yaml
    kueue_queue: str | None = None
    name: str | None = None
    model_cache: str = "emptydir"

    @property
    def manifest(self) -> str:
        return f"{self.output}/{MANIFEST}"

    def command(self) -> str:
        extra = f" --name {self.name}" if self.name else ""
        extra += f" --kueue-queue {self.kueue_queue}" if self.kueue_queue else ""
        extra += f" --model-cache {self.model_cache}" if self.model_cache != "emptydir" else ""
        return f"python -m serving_k8s render {self.config} --kind {self.kind}{extra} --base {self.output}"


MANIFEST = "rayservice.yaml"
KUSTOMIZATION = "kustomization.yaml"

# Every committed base. Object names differ between them (the RayService's name prefixes
# every object of an install), so two overlays applied to one namespace never replace
# each other's objects; the cluster and Kueue variants are still alternatives for the
# same GPUs (docs/laptop-to-cluster.md).
TARGETS = [
    Target("configs/gpu.yaml", "single-gpu", "k8s/base/gpu", model_cache="pvc"),
    Target("configs/cluster.yaml", "multi-node", "k8s/base/cluster", model_cache="pvc"),
    Target(
        "configs/cluster.yaml",
        "multi-node",
        "k8s/base/cluster-kueue",
        kueue_queue="llm-serving",
        name="llm-cluster-kueue",
        model_cache="pvc",
    ),
    Target("k8s/configs/cpu.yaml", "cpu", "k8s/base/cpu"),
]
# The optional monitoring kustomization (Prometheus Operator + Grafana's dashboard sidecar),
# generated from observability/.
MONITORING_DIR = "k8s/monitoring"
ALERTS_FILE = "observability/alerts.yml"
DASHBOARD_FILE = "observability/grafana-dashboard.json"


# -- facts shared with the tests --------------------------------------------------


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def project_version() -> str:
    return __version__


def ray_version() -> str:
    """The Ray pin of pyproject.toml: the image's Ray, so the RayCluster's rayVersion."""
    for dep in pyproject()["project"]["dependencies"]:
        m = re.fullmatch(r"ray(\[[^\]]*\])?==([\w.]+)", dep.replace(" ", ""))
        if m:
            return m.group(2)
    raise RenderError("pyproject.toml does not pin ray (ray[serve]==X.Y.Z)")


def default_image(kind_name: str = "single-gpu") -> str:
    """The image of the Dockerfile's build for `kind_name`: `-cpu` (EXTRA=cpu) or `-gpu`."""
    build = "gpu" if KINDS[kind_name].gpu else "cpu"
    return f"{IMAGE_REPOSITORY}:{project_version()}-{build}"


def default_name(config: str | Path) -> str:
    return "llm-" + re.sub(r"[^a-z0-9-]", "-", Path(config).stem.lower())


def gpus_per_replica(model: ModelConfig) -> int:
    """GPUs one replica of `model` uses: tensor_parallel_size x pipeline_parallel_size."""
    return workers_per_replica(model)  # one rule with check and serve run's build (null means 1)


DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
MAX_RAYSERVICE_NAME = 47  # KubeRay: 53 (the longest "-serve-svc" name) minus the cluster suffix


def check_name(name: str) -> None:
    if not DNS_1035.fullmatch(name) or len(name) > MAX_RAYSERVICE_NAME:
        raise RenderError(
            f"name {name!r} must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter) "
            f"of at most {MAX_RAYSERVICE_NAME} characters"
        )


# -- rendering --------------------------------------------------------------------


def _serve_facts(data: dict[str, Any], where: str) -> tuple[AppConfig, int]:
    apps = app_configs(data)
    if len(apps) != 1:
        raise RenderError(f"{where}: expected exactly one serving.deployments.app application, found {len(apps)}")
    http = data.get("http_options") or {}
    if http.get("host") != "0.0.0.0":
        raise RenderError(f"{where}: http_options.host must be 0.0.0.0 so the pod's IP reaches Serve's proxy")
    serve_port = int(http.get("port", 8000))
    cfg = apps[0]
    if cfg.auth.mode == "open":
        raise RenderError(f"{where}: auth: open is for development; a cluster's config needs API keys (SECURITY.md)")
    if cfg.auth.api_keys_env not in (None, API_KEYS_ENV):
        raise RenderError(
            f"{where}: auth.api_keys_env must be {API_KEYS_ENV} (the Secret's key the pods get) or null with a key file"
        )
    if cfg.ingress.mode == "direct":
        if cfg.ingress.host != "0.0.0.0":
            raise RenderError(f"{where}: ingress.host must be 0.0.0.0 so the Service reaches the direct ingress")
        if cfg.ingress.port == serve_port:
            raise RenderError(f"{where}: ingress.port and http_options.port must differ (direct vs Serve proxy)")
    return cfg, serve_port


def _worker_shape(cfg: AppConfig, where: str, kind: Kind) -> dict[str, Any]:
    if len(cfg.models) != 1:
        raise RenderError(f"{where}: the renderer supports one model per cluster (one worker group)")
    model = cfg.models[0]
    d = model.deployment
    if not kind.gpu:
        if d.num_gpus > 0 or model.engine_args.get("device") not in (None, "cpu"):
            raise RenderError(f"{where}: {model.id}: --kind {kind.name} runs on CPUs; the model asks for GPUs")
        gpus = 0
    elif d.num_gpus <= 0:
        raise RenderError(
            f"{where}: {model.id}: --kind {kind.name} needs a GPU model (deployment.num_gpus); "
            "use --kind cpu for a CPU config"
        )
    else:
        gpus = gpus_per_replica(model)
    if kind.gpu and d.num_gpus != gpus:
        raise RenderError(
            f"{where}: {model.id}: deployment.num_gpus ({d.num_gpus:g}) must equal tensor_parallel_size x "
            f"pipeline_parallel_size ({gpus}): the replica holds the GPUs of all its vLLM workers"
        )
    if gpus > 1 and model.engine_args.get("distributed_executor_backend") != "mp":
        raise RenderError(
            f"{where}: {model.id}: with {gpus} GPUs per replica set engine_args.distributed_executor_backend: mp "
            "(vLLM's workers run as processes of the replica, on its pod)"
        )
    if d.memory_gib is None:
        raise RenderError(f"{where}: {model.id}: set deployment.memory_gib; it sizes the worker pods")
    # One CPU per vLLM worker process (one per GPU; on CPUs the engine core itself).
    cpus = math.ceil(d.num_cpus) + max(gpus, 1) + kind.system_cpus
    memory_gib = math.ceil(d.memory_gib) + kind.worker_object_store_gib + kind.shm_extra_gib + kind.system_memory_gib
    a = d.autoscaling
    return {
        "model": model,
        "gpus": gpus,
        "cpus": cpus,
        "memory_gib": memory_gib,
        "min_pods": a.min_replicas,
        "max_pods": a.max_replicas,
        "initial_pods": a.initial_replicas if a.initial_replicas is not None else a.min_replicas,
        **stop_times(cfg),
    }


def stop_times(cfg: AppConfig) -> dict[str, int]:
    """How a worker pod stops, consistent with the replicas' `graceful_shutdown_timeout_s` (the longest).

    On SIGTERM, Ray (2.60) drains the node for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
    (30 s unless set) whatever the pod's grace period says; within it each replica
    lets its streams finish, then ends the rest with an error event. So: the drain
    a little longer than the replicas' timeout, the pod's grace period longer still,
    and on an upgrade (a new cluster) the old cluster kept that long before deletion
    (rayClusterDeletionDelaySeconds, 60 s unless set), for the streams it still serves.
    """
    longest = int(math.ceil(max(m.deployment.graceful_shutdown_timeout_s for m in cfg.models)))
    return {"drain_s": longest + 15, "grace_s": longest + 30, "deletion_delay_s": longest + 30}


def _quantity(amount: float) -> str:
    """A resource amount as KubeRay passes it to `ray start`: exact (no exponent, no rounding)."""
    return str(int(amount)) if float(amount).is_integer() else repr(float(amount))


def secret_keys(cfg: AppConfig) -> dict[str, bool]:
    """The Secret's keys the pods get as environment variables, each with whether it is required: HF_TOKEN
    (optional), the app's keys (required when the config reads them) and each tenant's `keys_env` (required: a
    tenant's keys fail closed as the app's do)."""
    keys = {k: k in REQUIRED_SECRET_KEYS for k in SECRET_KEYS if k != API_KEYS_ENV or cfg.auth.api_keys_env}
    keys.update({t.keys_env: True for t in cfg.auth.tenants if t.keys_env})
    return keys


def _secret_env(cfg: AppConfig) -> list[dict[str, Any]]:
    return [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": key, "optional": not required}}}
        for key, required in secret_keys(cfg).items()
    ]


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _resources(cpu: str, memory: str, gpus: int = 0, ephemeral_gib: int = 0) -> dict[str, Any]:
    amounts: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if ephemeral_gib:
        amounts["ephemeral-storage"] = f"{ephemeral_gib}Gi"
    if gpus:
        amounts["nvidia.com/gpu"] = gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": APP_LABEL,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
    }


def _port(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def _wget(port: int, path: str, expect: str | None = "success") -> str:
    cmd = f"wget --tries 1 -T 2 -q -O- http://localhost:{port}/{path}"
    return f"{cmd} | grep -q {expect}" if expect else f"{cmd} > /dev/null"


def _head(name: str, image: str, kind: Kind, serve_port: int, cfg: AppConfig) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "containers": [
            {
                "name": "ray-head",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "ports": [
                    _port("gcs-server", GCS_PORT),
                    _port("dashboard", DASHBOARD_PORT),
                    _port("client", CLIENT_PORT),
                    _port("serve", serve_port),
                    _port("metrics", METRICS_PORT),
                ],
                "env": _secret_env(cfg),
                "resources": _resources(kind.head_cpu, kind.head_memory, ephemeral_gib=kind.scratch_gib),
                "securityContext": _container_security(),
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
            }
        ],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{HEAD_OBJECT_STORE_GIB + 1}Gi"}}],
    }
    if kind.head_on_gpu_node:
        spec["tolerations"] = [dict(t) for t in GPU_TOLERATIONS]
    return {
        "rayStartParams": {
            "num-cpus": "0",  # no replicas on the head: it keeps Ray's control plane responsive
            "dashboard-host": "0.0.0.0",
            "metrics-export-port": str(METRICS_PORT),
            "object-store-memory": str(HEAD_OBJECT_STORE_GIB * GIB),
        },
        "template": {"metadata": {"labels": _labels(name, HEAD_COMPONENT)}, "spec": spec},
    }


def _model_cache_volume(name: str, kind: Kind, model_cache: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The worker's model-cache volume and its mount."""
    claim = check_model_cache(model_cache)
    mount: dict[str, Any] = {"name": "model-cache", "mountPath": HF_HOME}
    if claim:
        mount["readOnly"] = True
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}, mount
    if model_cache == "pvc":
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{name}-model-cache"}}, mount
    return {"name": "model-cache", "emptyDir": {"sizeLimit": f"{kind.model_cache_gib}Gi"}}, mount


def _worker(
    name: str,
    image: str,
    kind: Kind,
    shape: dict[str, Any],
    cfg: AppConfig,
    serve_port: int,
    fixed_pods: int | None,
    model_cache: str,
) -> dict[str, Any]:
    direct = cfg.ingress.mode == "direct"
    cache_volume, cache_mount = _model_cache_volume(name, kind, model_cache)
    # The container's filesystem, plus the model cache when it is an emptyDir (node-local disk).
    ephemeral_gib = kind.scratch_gib + (kind.model_cache_gib if "emptyDir" in cache_volume else 0)
    env = [
        *_secret_env(cfg),
        {"name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "value": str(shape["drain_s"])},
        {"name": ENGINE_METRICS_PORT_ENV, "value": str(ENGINE_METRICS_PORT)},
    ]
    if check_model_cache(model_cache):
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})  # the weights are on the read-only claim
    ports = [_port("serve", serve_port), _port("metrics", METRICS_PORT), _port("engine-metrics", ENGINE_METRICS_PORT)]
    if direct:
        ports.insert(0, _port("direct", cfg.ingress.port))
    container: dict[str, Any] = {
        "name": "ray-worker",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "ports": ports,
        "env": env,
        "resources": _resources(str(shape["cpus"]), f"{shape['memory_gib']}Gi", shape["gpus"], ephemeral_gib),
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, cache_mount],
    }
    if direct:
        # KubeRay's own worker probe (raylet + Serve proxy health) plus the direct
        # ingress being ready: a pod takes traffic on either Service only once its
        # LLM replica has loaded the model, and leaves both when the replica is gone.
        checks = [
            _wget(DASHBOARD_AGENT_PORT, "api/local_raylet_healthz"),
            _wget(serve_port, "-/healthz"),
            _wget(cfg.ingress.port, "ready", expect=None),
        ]
        container["readinessProbe"] = {
            "exec": {"command": ["bash", "-c", " && ".join(checks)]},
            "initialDelaySeconds": 10,
            "periodSeconds": 5,
            "timeoutSeconds": 8,
            "successThreshold": 1,
            "failureThreshold": 2,
        }
    pod_spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        # Longer than the replicas' graceful_shutdown_timeout_s: streams drain first.
        "terminationGracePeriodSeconds": shape["grace_s"],
    }
    if kind.gpu:
        pod_spec["nodeSelector"] = dict(GPU_NODE_SELECTOR)
        pod_spec["tolerations"] = [dict(t) for t in GPU_TOLERATIONS]
    shm_gib = kind.worker_object_store_gib + kind.shm_extra_gib
    pod_spec["containers"] = [container]
    pod_spec["volumes"] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{shm_gib}Gi"}},
        cache_volume,
    ]
    min_pods, max_pods, replicas = shape["min_pods"], shape["max_pods"], shape["initial_pods"]
    if fixed_pods is not None:
        min_pods = max_pods = replicas = fixed_pods
    group: dict[str, Any] = {
        "groupName": "gpu-workers" if kind.gpu else "cpu-workers",
        "replicas": replicas,
        "minReplicas": min_pods,
        "maxReplicas": max_pods,
        "rayStartParams": {
            "metrics-export-port": str(METRICS_PORT),
            "object-store-memory": str(kind.worker_object_store_gib * GIB),
        },
        "template": {
            "metadata": {"labels": _labels(name, WORKER_COMPONENT)},
            "spec": pod_spec,
        },
    }
    custom = shape["model"].deployment.resources
    if custom:
        # One replica per pod: the group offers what one replica asks for (KubeRay passes the
        # group's `resources` to `ray start --resources`).
        group["resources"] = {name: _quantity(amount) for name, amount in sorted(custom.items())}
    return group


def build_objects(
    config: str | Path,
    kind_name: str,
    *,
    name: str | None = None,
    image: str | None = None,
    kueue_queue: str | None = None,
    model_cache: str = "emptydir",
) -> list[dict[str, Any]]:
    """The Kubernetes objects of one install of `config`, every one named after the RayService: the RayService,
    in direct mode its direct-ingress Service, the workers' PodDisruptionBudget and, with `model_cache="pvc"`,
    the model cache's PersistentVolumeClaim."""
    if kind_name not in KINDS:
        raise RenderError(f"unknown kind {kind_name!r} (known: {', '.join(KINDS)})")
    kind = KINDS[kind_name]
    path = Path(config)
    if not path.is_absolute():
        path = (Path.cwd() / path) if (Path.cwd() / path).exists() else REPO_ROOT / path
    data = check_serve_config(path)
    where = str(config)
    cfg, serve_port = _serve_facts(data, where)
    shape = _worker_shape(cfg, where, kind)
    check_model_cache(model_cache)
    name = name or default_name(path)
    check_name(name)
    image = image or default_image(kind_name)
    if ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest"):
        raise RenderError(f"image {image!r} must be pinned by a version tag")
    if kueue_queue is not None and not DNS_1035.fullmatch(kueue_queue.replace(".", "-")):
        raise RenderError(f"invalid Kueue queue name {kueue_queue!r}")

    autoscaling = kind.autoscaling and kueue_queue is None
    # Without the autoscaler the worker group is fixed at the most pods Serve can use.
    fixed = None if autoscaling else shape["max_pods"]
    cluster: dict[str, Any] = {"rayVersion": ray_version()}
    if autoscaling:
        cluster["enableInTreeAutoscaling"] = True
        cluster["autoscalerOptions"] = {
            "upscalingMode": "Default",
            "idleTimeoutSeconds": kind.idle_timeout_s,
            "imagePullPolicy": "IfNotPresent",
            "resources": _resources("500m", "512Mi"),
            "securityContext": _container_security(),
        }
    else:
        cluster["enableInTreeAutoscaling"] = False
    cluster["headGroupSpec"] = _head(name, image, kind, serve_port, cfg)
    cluster["workerGroupSpecs"] = [_worker(name, image, kind, shape, cfg, serve_port, fixed, model_cache)]

    labels = {"app.kubernetes.io/name": APP_LABEL, "app.kubernetes.io/instance": name}
    if kueue_queue is not None:
        labels["kueue.x-k8s.io/queue-name"] = kueue_queue
    serve_text = "\n".join(line.rstrip() for line in path.read_text().strip().splitlines()) + "\n"
    rayservice = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            # The Serve proxy Service (<name>-serve-svc) selects worker pods only:
            # the head hosts no replicas and should not relay token streams.
            "excludeHeadPodFromServeSvc": True,
            "upgradeStrategy": {"type": "NewCluster"},
            "rayClusterDeletionDelaySeconds": shape["deletion_delay_s"],
            "serveConfigV2": serve_text,
            "rayClusterConfig": cluster,
        },
    }
    objects = [rayservice]
    if cfg.ingress.mode == "direct":
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": f"{name}-direct", "labels": _labels(name, "direct-ingress")},
                "spec": {
                    "type": "ClusterIP",
                    # The RayCluster behind a RayService has a generated name that
                    # changes on upgrades, so select the worker pods by the labels of
                    # their template instead of by ray.io/cluster.
                    "selector": _labels(name, WORKER_COMPONENT) | {"ray.io/node-type": "worker"},
                    "ports": [{"name": "http", "port": cfg.ingress.port, "targetPort": "direct", "protocol": "TCP"}],
                },
            }
        )
    objects.append(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": f"{name}-workers", "labels": _labels(name, WORKER_COMPONENT)},
            "spec": {
                # Voluntary evictions (node drains, upgrades of the node pool) take one worker
                # pod at a time, each draining its streams for its grace period. Not
                # minAvailable: with one worker pod that would block every drain of its node.
                # The autoscaler deletes idle pods directly, unaffected by the budget.
                "maxUnavailable": 1,
                "selector": {"matchLabels": _labels(name, WORKER_COMPONENT)},
            },
        }
    )
    if model_cache == "pvc":
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"{name}-model-cache", "labels": _labels(name, "model-cache")},
                "spec": {
                    # Several worker pods on several nodes share it once the group can grow
                    # (or holds more than one pod): that needs a ReadWriteMany storage class
                    # (NFS, EFS, Filestore, CephFS). The cluster's default class is used.
                    "accessModes": ["ReadWriteMany" if shape["max_pods"] > 1 else "ReadWriteOnce"],
                    "resources": {"requests": {"storage": f"{kind.model_cache_gib}Gi"}},
                },
            }
        )
    return objects


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(objects: list[dict[str, Any]]) -> str:
    return "---\n".join(
        yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=1000, default_flow_style=False) for obj in objects
    )


HEADER_NOTE = "# Do not edit: change its source or serving_k8s/render.py and regenerate (tests/k8s checks for drift).\n"


def render(
    config: str | Path,
    kind_name: str,
    *,
    name: str | None = None,
    image: str | None = None,
    kueue_queue: str | None = None,
    model_cache: str = "emptydir",
    command: str | None = None,
) -> str:
    """The manifest text for `config` (what `render` writes and what the drift test compares)."""
    objects = build_objects(config, kind_name, name=name, image=image, kueue_queue=kueue_queue, model_cache=model_cache)
    shown = _display(config)
    queue = f" --kueue-queue {kueue_queue}" if kueue_queue else ""
    command = command or f"python -m serving_k8s render {shown} --kind {kind_name}{queue}"
    return f"# GENERATED from {shown} by:\n#   {command}\n" + HEADER_NOTE + dump(objects)


def kustomization(resources: list[str], command: str, about: str) -> str:
    """A generated kustomization.yaml listing `resources` (files of its own directory)."""
    body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": resources}
    return f"# {about}\n# GENERATED by:\n#   {command}\n" + HEADER_NOTE + dump([body])


def _base_kustomization(command: str) -> str:
    about = (
        "A Kustomize base: one install of a config. Apply an overlay of k8s/overlays/ (which sets the namespace),\n"
        "# or one of your own that lists this directory (docs/laptop-to-cluster.md)."
    )
    return kustomization([MANIFEST], command, about)


def _display(config: str | Path) -> str:
    path = Path(config)
    if path.is_absolute() and path.is_relative_to(REPO_ROOT):
        return str(path.relative_to(REPO_ROOT))
    return str(config)


def render_target(target: Target) -> str:
    return render(
        REPO_ROOT / target.config,
        target.kind,
        name=target.name,
        kueue_queue=target.kueue_queue,
        model_cache=target.model_cache,
        command=target.command(),
    )


# -- monitoring (Prometheus Operator, Grafana's dashboard sidecar) ----------------------------

MONITORING_LABELS = {"app.kubernetes.io/name": APP_LABEL, "app.kubernetes.io/component": "monitoring"}
DASHBOARD_KEY = "llm-serving.json"


def podmonitor() -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        # kube-prometheus-stack selects PodMonitors and rules by its Helm release's name.
        "metadata": {"name": "llm-serving-ray-pods", "labels": MONITORING_LABELS | {"release": "prometheus"}},
        "spec": {
            # Every Ray pod KubeRay creates in the namespace (head and workers), on the
            # container port named "metrics" (METRICS_PORT, `metrics-export-port`: Ray,
            # Serve and ours) and, on the workers, "engine-metrics" (vLLM's own vllm:*).
            "selector": {"matchLabels": {"ray.io/is-ray-node": "yes"}},
            "podMetricsEndpoints": [
                {
                    "port": port,
                    "path": "/metrics",
                    "interval": "15s",
                    # Ray's own dashboards filter on these.
                    "relabelings": [
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_cluster"],
                            "targetLabel": "ray_io_cluster",
                        },
                        {
                            "sourceLabels": ["__meta_kubernetes_pod_label_ray_io_node_type"],
                            "targetLabel": "ray_io_node_type",
                        },
                    ],
                }
                for port in ("metrics", "engine-metrics")
            ],
        },
    }


def prometheus_rule(alerts_path: Path) -> dict[str, Any]:
    """observability/alerts.yml (a Prometheus rule file) as a PrometheusRule."""
    data = yaml.safe_load(alerts_path.read_text()) or {}
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not groups:
        raise RenderError(f"{_display(alerts_path)}: expected a Prometheus rule file with `groups:`")
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "llm-serving-alerts", "labels": MONITORING_LABELS | {"release": "prometheus"}},
        "spec": {"groups": groups},
    }


def dashboard_configmap(dashboard_path: Path) -> dict[str, Any]:
    """The Grafana dashboard as a ConfigMap that Grafana's dashboard sidecar loads (label grafana_dashboard)."""
    text = dashboard_path.read_text()
    json.loads(text)  # a broken dashboard fails here, not in Grafana
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "llm-serving-dashboard", "labels": MONITORING_LABELS | {"grafana_dashboard": "1"}},
        "data": {DASHBOARD_KEY: text},
    }


def monitoring_files() -> dict[str, str]:
    """The files of k8s/monitoring/, by name. alerts.yml is optional: without it, no PrometheusRule."""
    command = "python -m serving_k8s render-all"
    files: dict[str, str] = {}

    def add(file: str, source: str, obj: dict[str, Any]) -> None:
        files[file] = f"# GENERATED from {source} by:\n#   {command}\n" + HEADER_NOTE + dump([obj])

    add("podmonitor.yaml", "serving_k8s/render.py (METRICS_PORT, ENGINE_METRICS_PORT)", podmonitor())
    alerts = REPO_ROOT / ALERTS_FILE
    if alerts.exists():
        add("prometheusrule.yaml", ALERTS_FILE, prometheus_rule(alerts))
    add("grafana-dashboard.yaml", DASHBOARD_FILE, dashboard_configmap(REPO_ROOT / DASHBOARD_FILE))
    about = (
        "Monitoring of the installs in one namespace, optional: needs the Prometheus Operator's CRDs\n"
        "# (PodMonitor, PrometheusRule) and Grafana's dashboard sidecar (kube-prometheus-stack).\n"
        "#   kubectl apply -k k8s/monitoring -n llm"
    )
    files[KUSTOMIZATION] = kustomization(sorted(files), command, about)
    return files


def generated_files() -> dict[Path, str]:
    """Every file `render-all` writes, by path: what the drift test compares."""
    out: dict[Path, str] = {}
    for target in TARGETS:
        out[REPO_ROOT / target.manifest] = render_target(target)
        out[REPO_ROOT / target.output / KUSTOMIZATION] = _base_kustomization(target.command())
    for file, text in monitoring_files().items():
        out[REPO_ROOT / MONITORING_DIR / file] = text
    return out


def _write_or_check(text: str, output: Path, check: bool, command: str) -> bool:
    current = output.read_text() if output.exists() else None
    if check:
        if current != text:
            diff = "".join(
                difflib.unified_diff(
                    (current or "").splitlines(True), text.splitlines(True), str(output), "rendered", n=1
                )
            )
            print(f"{output} is out of date; regenerate with:\n  {command}\n{diff}", file=sys.stderr)
            return False
        print(f"{output}: up to date")
        return True
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"wrote {output}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving_k8s", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render one config into a RayService manifest or a Kustomize base")
    r.add_argument("config")
    r.add_argument("--kind", choices=sorted(KINDS), required=True)
    r.add_argument("--name", help="RayService name, the prefix of every object's name (default: llm-<config stem>)")
    r.add_argument("--image", help="serving image, pinned by tag (default: the Dockerfile's build for --kind)")
    r.add_argument("--kueue-queue", help="admit through this Kueue LocalQueue (fixed-size worker group)")
    r.add_argument(
        "--model-cache",
        default="emptydir",
        metavar="|".join(MODEL_CACHE_MODES),
        help="the workers' Hugging Face cache: a per-pod emptyDir (default), a rendered PersistentVolumeClaim, "
        "or an existing claim holding the weights, mounted read-only",
    )
    out = r.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="write the manifest here (default: stdout)")
    out.add_argument("--base", help=f"write a Kustomize base into this directory ({MANIFEST} + {KUSTOMIZATION})")
    r.add_argument("--check", action="store_true", help="compare with --output / --base instead of writing")
    a = sub.add_parser("render-all", help="regenerate every committed base and k8s/monitoring")
    a.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args(argv)

    try:
        if args.command == "render-all":
            ok = all(
                [
                    _write_or_check(text, path, args.check, "python -m serving_k8s render-all")
                    for path, text in generated_files().items()
                ]
            )
            return 0 if ok else 1
        if args.check and not (args.output or args.base):
            parser.error("--check needs -o/--output or --base")
        parts = [f"python -m serving_k8s render {args.config} --kind {args.kind}"]
        for flag, value in (
            ("--name", args.name),
            ("--image", args.image),
            ("--kueue-queue", args.kueue_queue),
            ("--model-cache", args.model_cache if args.model_cache != "emptydir" else None),
            ("-o", args.output),
            ("--base", args.base),
        ):
            if value:
                parts.append(f"{flag} {value}")
        command = " ".join(parts)
        text = render(
            args.config,
            args.kind,
            name=args.name,
            image=args.image,
            kueue_queue=args.kueue_queue,
            model_cache=args.model_cache,
            command=command,
        )
    except (RenderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.base:
        base = Path(args.base)
        ok = _write_or_check(text, base / MANIFEST, args.check, command)
        return (
            0 if _write_or_check(_base_kustomization(command), base / KUSTOMIZATION, args.check, command) and ok else 1
        )
    if not args.output:
        sys.stdout.write(text)
        return 0
    return 0 if _write_or_check(text, Path(args.output), args.check, command) else 1


if __name__ == "__main__":
    sys.exit(main())
