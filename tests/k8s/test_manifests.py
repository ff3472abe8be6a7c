"""The manifests in k8s/ against KubeRay's and Kubernetes' schemas, and the rules no schema expresses.

These read the committed files (the generated bases of k8s/base/ and k8s/monitoring/);
tests/k8s/test_kustomize.py checks what `kubectl kustomize` makes of the overlays.

Fast and offline: no cluster, no Ray. KubeRay's CRD schemas are test data in
tests/k8s/data/kuberay-v1.7.0 (source and license in its README);
Kubernetes' own schemas come with the kubernetes-validate package.
"""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from serving.config import AppConfig, app_configs, load_serve_config
from serving_k8s import render as k8s
from tests.k8s.conftest import (
    K8S_DIR,
    K8S_VERSION,
    ROOT,
    all_objects,
    file_id,
    load_documents,
    object_meta_errors,
    objects_of_kind,
    rayservice_and_service,
    rayservice_files,
    schema_errors,
)

RAYSERVICE_FILES = rayservice_files()
RS_IDS = [file_id(p) for p in RAYSERVICE_FILES]
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
IANA_SVC_NAME = re.compile(r"(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?")
QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
REQUIRED_PORTS = {8000, 8001, 8265, 6379, 10001, 8080}  # direct, serve, dashboard, GCS, client, metrics


def test_k8s_folder_layout():
    """Bases (generated), one overlay per base, monitoring; nothing `kubectl apply -f k8s/` would apply."""
    assert not list(K8S_DIR.glob("*.yaml")) and not list(K8S_DIR.glob("*.yml")), "k8s/ itself must hold no manifest"
    bases = {Path(t.output).name for t in k8s.TARGETS}
    assert {p.parent.name for p in (K8S_DIR / "base").glob("*/kustomization.yaml")} == bases
    assert {p.parent.name for p in (K8S_DIR / "overlays").glob("*/kustomization.yaml")} == bases
    for path, obj in all_objects():
        assert {"apiVersion", "kind", "metadata"} <= obj.keys(), f"{file_id(path)}: incomplete object {obj!r:.80}"
        assert obj["metadata"].get("name"), f"{file_id(path)}: {obj['kind']} without metadata.name"
        assert obj["kind"] not in ("Secret", "Namespace"), f"{file_id(path)}: a {obj['kind']} in the manifests"


def test_every_generated_folder_is_generated():
    """A file in k8s/base or k8s/monitoring that render-all does not write would be hand-edited and escape
    the drift test (or be a stale leftover of an earlier layout)."""
    generated = set(k8s.generated_files())
    on_disk = {p for d in ("base", "monitoring") for p in (K8S_DIR / d).rglob("*") if p.is_file()}
    assert on_disk == generated, f"not generated: {sorted(map(str, on_disk - generated))}"
    assert {p for p in RAYSERVICE_FILES} == {ROOT / t.manifest for t in k8s.TARGETS}


# -- (i) KubeRay CRD schemas ----------------------------------------------------------


@pytest.mark.parametrize("path", RAYSERVICE_FILES, ids=RS_IDS)
def test_rayservice_matches_kuberay_schema(path, rayservice_schema):
    rs, _ = rayservice_and_service(path)
    errors = schema_errors(rayservice_schema, rs) + object_meta_errors(rs)
    assert not errors, f"{path.name} violates KubeRay's RayService schema:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize("path", RAYSERVICE_FILES, ids=RS_IDS)
def test_embedded_cluster_matches_kuberay_raycluster_schema(path, raycluster_schema):
    rs, _ = rayservice_and_service(path)
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": rs["metadata"]["name"] + "-abcde"},
        "spec": rs["spec"]["rayClusterConfig"],
    }
    errors = schema_errors(raycluster_schema, cluster)
    assert not errors, f"{path.name}: rayClusterConfig violates KubeRay's RayCluster schema:\n  " + "\n  ".join(errors)


def _first_rayservice() -> dict[str, Any]:
    return rayservice_and_service(RAYSERVICE_FILES[0])[0]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"].update(rayStartParam={}), "rayStartParam"),
        (lambda rs: rs["spec"].update(serveConfig="x"), "serveConfig"),
        (
            lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
                0
            ].update(imagePullPolice="Always"),
            "imagePullPolice",
        ),
        (
            lambda rs: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}),
            "is not of type 'string'",
        ),
        (lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
        (
            lambda rs: rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(maxReplicas="4"),
            "is not of type 'integer'",
        ),
        (
            lambda rs: rs["spec"]["rayClusterConfig"].update(autoscalerOptions={"upscalingMode": "Fast"}),
            "is not one of",
        ),
    ],
    ids=[
        "unknown-field",
        "unknown-spec-field",
        "unknown-container-field",
        "int-start-param",
        "missing-required",
        "string-replicas",
        "bad-enum",
    ],
)
def test_schema_check_rejects_mistakes(mutate, expected, rayservice_schema):
    rs = copy.deepcopy(_first_rayservice())
    assert not schema_errors(rayservice_schema, rs)
    mutate(rs)
    errors = schema_errors(rayservice_schema, rs)
    assert any(expected in e for e in errors), errors


def test_schema_defaults_are_applied(rayservice_schema):
    from tests.k8s.conftest import apply_defaults

    rs = copy.deepcopy(_first_rayservice())
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    del group["minReplicas"]
    defaulted = apply_defaults(rayservice_schema, rs)["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert defaulted["minReplicas"] == 0 and defaulted["numOfHosts"] == 1


# -- (ii) pod templates and plain objects against Kubernetes' schemas ---------------------


def pod_templates(rs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    cluster = rs["spec"]["rayClusterConfig"]
    out = [("head", cluster["headGroupSpec"]["template"])]
    out += [(f"worker:{g['groupName']}", g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    return out


def as_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    metadata = {"name": name, **copy.deepcopy(template.get("metadata") or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": copy.deepcopy(template["spec"])}


def k8s_errors(obj: dict[str, Any]) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    return []


@pytest.mark.parametrize("path", RAYSERVICE_FILES, ids=RS_IDS)
def test_pod_templates_are_valid_pods(path):
    rs, _ = rayservice_and_service(path)
    for role, template in pod_templates(rs):
        errors = k8s_errors(as_pod(template, f"{rs['metadata']['name']}-{role.split(':')[0]}"))
        assert not errors, f"{path.name} {role} template is not a valid Pod (Kubernetes {K8S_VERSION}): {errors}"


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget", "PersistentVolumeClaim", "ConfigMap"])
def test_core_objects_are_valid(kind):
    found = objects_of_kind(kind)
    assert found, f"no {kind} in k8s/"
    for path, obj in found:
        errors = k8s_errors(obj)
        assert not errors, f"{file_id(path)}: {kind} {obj['metadata']['name']}: {errors}"


def test_kubernetes_validation_rejects_a_broken_template():
    rs = _first_rayservice()
    pod = as_pod(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"], "x")
    pod["spec"]["containers"][0]["ports"][0]["containerPort"] = "6379"
    assert k8s_errors(pod)
    pod = as_pod(rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"], "x")
    pod["spec"]["securityContext"]["runAsNonroot"] = True
    assert k8s_errors(pod)


# -- (iii) rules no schema expresses ------------------------------------------------------


def serve_config(rs: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(rs["spec"]["serveConfigV2"])


def app_config(rs: dict[str, Any]) -> AppConfig:
    (cfg,) = app_configs(serve_config(rs))
    return cfg


def quantity(value: Any) -> float:
    m = QUANTITY.match(str(value))
    assert m, f"unparsable quantity {value!r}"
    scale = {
        None: 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }[m.group(2)]
    return float(m.group(1)) * scale


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    return template["spec"]["containers"]


def ports_by_name(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    return int(users[-1].split(":")[0])


def rule_errors(rs: dict[str, Any], service: dict[str, Any] | None) -> list[str]:
    """Everything the schemas cannot say about one rendered RayService (+ its direct Service)."""
    errors: list[str] = []
    name = rs["metadata"]["name"]
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    groups = cluster.get("workerGroupSpecs", [])
    data = serve_config(rs)
    cfg = app_config(rs)
    serve_port = (data.get("http_options") or {}).get("port", 8000)

    # Names: KubeRay appends a 6-character suffix for the RayCluster, then "-serve-svc".
    if not DNS_1035.fullmatch(name) or len(name) > 47:
        errors.append(f"RayService name {name!r} is not a DNS-1035 label of <= 47 characters")
    for g in groups:
        if not DNS_1123_LABEL.fullmatch(g["groupName"]) or len(g["groupName"]) > 63:
            errors.append(f"groupName {g['groupName']!r} is not a DNS-1123 label")
    if service is not None and (
        not DNS_1035.fullmatch(service["metadata"]["name"]) or len(service["metadata"]["name"]) > 63
    ):
        errors.append(f"Service name {service['metadata']['name']!r} is not a DNS-1035 label")

    # Upgrades: the old cluster outlives the streams it still serves.
    longest_stop = max(m.deployment.graceful_shutdown_timeout_s for m in cfg.models)
    delay = rs["spec"].get("rayClusterDeletionDelaySeconds", 60)  # KubeRay's default
    if delay < longest_stop:
        errors.append(
            f"rayClusterDeletionDelaySeconds ({delay}) < the replicas' graceful_shutdown_timeout_s ({longest_stop:g})"
        )

    # Worker groups: bounds.
    for g in groups:
        lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas")
        if lo is None or hi is None:
            errors.append(f"{g['groupName']}: set minReplicas and maxReplicas explicitly")
        elif lo > hi:
            errors.append(f"{g['groupName']}: minReplicas ({lo}) > maxReplicas ({hi})")
        elif n is not None and not lo <= n <= hi:
            errors.append(f"{g['groupName']}: replicas ({n}) outside [{lo}, {hi}]")

    # Images: pinned, the same everywhere (one Ray version per cluster), rayVersion = the image's Ray.
    images = {c["image"] for _, t in pod_templates(rs) for c in containers(t)}
    for image in images:
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        if not tag or tag == "latest":
            errors.append(f"image {image!r} is not pinned by a version tag")
    if len(images) != 1:
        errors.append(f"head and workers run different images: {sorted(images)}")
    if cluster.get("rayVersion") != k8s.ray_version():
        errors.append(
            f"rayVersion {cluster.get('rayVersion')!r} != the Ray pin of pyproject.toml ({k8s.ray_version()})"
        )

    # The head: Ray's control plane only; ports of GCS, dashboard, client, serve, metrics.
    if head.get("rayStartParams", {}).get("num-cpus") != "0":
        errors.append('head rayStartParams must have num-cpus: "0" (no replicas on the head)')
    head_ports = ports_by_name(containers(head["template"])[0])
    for port_name, port in (
        ("gcs-server", 6379),
        ("dashboard", 8265),
        ("client", 10001),
        ("serve", serve_port),
        ("metrics", 8080),
    ):
        if head_ports.get(port_name) != port:
            errors.append(f"head container must declare port {port_name}={port}, has {head_ports}")
    declared = {p for _, t in pod_templates(rs) for c in containers(t) for p in ports_by_name(c).values()}
    if not REQUIRED_PORTS <= declared:
        errors.append(f"container ports miss {sorted(REQUIRED_PORTS - declared)}")

    # GPU workers: GPUs = TP x PP of the model, nodeSelector + toleration, room for one replica.
    gpu_models = [m for m in cfg.models if m.deployment.num_gpus > 0]
    for g in groups:
        c = containers(g["template"])[0]
        limits, requests = c["resources"].get("limits", {}), c["resources"].get("requests", {})
        gpus = int(limits.get("nvidia.com/gpu", 0))
        for key in ("cpu", "memory"):
            if key not in limits or key not in requests:
                errors.append(f"{g['groupName']}: {key} needs both a request and a limit")
        if requests.get("nvidia.com/gpu", gpus) != limits.get("nvidia.com/gpu", 0):
            errors.append(f"{g['groupName']}: nvidia.com/gpu request and limit differ")
        for m in gpu_models:
            expected = k8s.gpus_per_replica(m)
            if gpus != expected:
                errors.append(
                    f"{g['groupName']}: GPU limit {gpus} != tensor_parallel_size x "
                    f"pipeline_parallel_size of {m.id} ({expected})"
                )
            if m.deployment.num_gpus != expected:
                errors.append(f"{m.id}: num_gpus {m.deployment.num_gpus:g} != TP x PP ({expected})")
            if quantity(limits.get("cpu", 0)) < m.deployment.num_cpus + expected:
                errors.append(
                    f"{g['groupName']}: {limits.get('cpu')} CPUs cannot hold a replica "
                    f"({m.deployment.num_cpus:g}) and its {expected} GPU worker processes"
                )
            object_store = int(g.get("rayStartParams", {}).get("object-store-memory", 0))
            need = (m.deployment.memory_gib or 0) * 2**30 + object_store
            if quantity(limits.get("memory", 0)) < need:
                errors.append(f"{g['groupName']}: memory limit {limits.get('memory')} < replica memory + object store")
            a = m.deployment.autoscaling
            if g.get("maxReplicas", 0) * gpus < a.max_replicas * m.deployment.num_gpus:
                errors.append(
                    f"{g['groupName']}: {g.get('maxReplicas')} pods x {gpus} GPUs cannot hold "
                    f"max_replicas={a.max_replicas} replicas of {m.id}"
                )
            if g.get("minReplicas", 0) * gpus < a.min_replicas * m.deployment.num_gpus:
                errors.append(f"{g['groupName']}: minReplicas pods cannot hold min_replicas={a.min_replicas}")
        if gpus:
            spec = g["template"]["spec"]
            if not spec.get("nodeSelector") and not spec.get("affinity", {}).get("nodeAffinity"):
                errors.append(f"{g['groupName']}: GPU pods need a nodeSelector (or node affinity) for GPU nodes")
            if not any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", [])):
                errors.append(f"{g['groupName']}: GPU pods need a toleration for the nvidia.com/gpu taint")
        grace = g["template"]["spec"].get("terminationGracePeriodSeconds", 30)
        longest = max(m.deployment.graceful_shutdown_timeout_s for m in cfg.models)
        if grace <= longest:
            errors.append(
                f"{g['groupName']}: terminationGracePeriodSeconds ({grace}) must exceed the replicas' "
                f"graceful_shutdown_timeout_s ({longest:g})"
            )
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        drain = float(env.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S") or 30)  # Ray's default
        if not longest < drain < grace:
            errors.append(
                f"{g['groupName']}: RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S ({drain:g}) must lie between the replicas' "
                f"graceful_shutdown_timeout_s ({longest:g}) and terminationGracePeriodSeconds ({grace})"
            )
        wports = ports_by_name(c)
        if wports.get("serve") != serve_port:
            errors.append(
                f"{g['groupName']}: port 'serve' ({wports.get('serve')}) != http_options.port ({serve_port})"
                " (KubeRay's serve Service and probe use it)"
            )
        if cfg.ingress.mode == "direct" and wports.get("direct") != cfg.ingress.port:
            errors.append(
                f"{g['groupName']}: port 'direct' ({wports.get('direct')}) != ingress.port ({cfg.ingress.port})"
            )
        if str(wports.get("metrics")) != g.get("rayStartParams", {}).get("metrics-export-port", "8080"):
            errors.append(f"{g['groupName']}: port 'metrics' != rayStartParams metrics-export-port")

    # Every Ray pod: non-root as the image's user, secrets from the Secret (the API keys required: auth fails closed).
    for role, template in pod_templates(rs):
        sc = template["spec"].get("securityContext", {})
        if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != dockerfile_uid():
            errors.append(f"{role}: securityContext must set runAsNonRoot: true and runAsUser: {dockerfile_uid()}")
        for c in containers(template):
            refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])}
            for key, required in k8s.secret_keys(cfg).items():
                ref = refs.get(key)
                if (
                    not ref
                    or ref.get("name") != k8s.SECRET_NAME
                    or ref.get("key") != key
                    or ref.get("optional") is required
                ):
                    need = "required" if required else "optional"
                    errors.append(f"{role}: env {key} must come from secret {k8s.SECRET_NAME} key {key}, {need}")

    # Autoscaling: the in-tree autoscaler when the worker group can grow.
    kueue = "kueue.x-k8s.io/queue-name" in rs["metadata"].get("labels", {})
    can_grow = any(g["minReplicas"] < g["maxReplicas"] for g in groups if "minReplicas" in g and "maxReplicas" in g)
    if can_grow and not cluster.get("enableInTreeAutoscaling"):
        errors.append("a worker group with minReplicas < maxReplicas needs enableInTreeAutoscaling: true")
    if kueue and cluster.get("enableInTreeAutoscaling"):
        errors.append("Kueue rejects enableInTreeAutoscaling on a queued RayService (without elastic jobs)")

    # The direct-ingress Service: exactly the worker pods, on their direct port.
    if cfg.ingress.mode == "direct":
        if service is None:
            errors.append("ingress.mode is direct but the manifest has no Service for the direct ingress")
        else:
            selector = service["spec"]["selector"]
            for g in groups:
                labels = {**g["template"]["metadata"].get("labels", {}), "ray.io/node-type": "worker"}
                if any(labels.get(k) != v for k, v in selector.items()):
                    errors.append(f"direct Service selector {selector} does not select {g['groupName']} pods")
            head_labels = {**head["template"]["metadata"].get("labels", {}), "ray.io/node-type": "head"}
            if all(head_labels.get(k) == v for k, v in selector.items()):
                errors.append("direct Service selects the head pod, which hosts no replica")
            (port,) = service["spec"]["ports"]
            if port["port"] != cfg.ingress.port or port["targetPort"] not in ("direct", cfg.ingress.port):
                errors.append(f"direct Service port {port} does not forward ingress.port {cfg.ingress.port}")
    return errors


@pytest.mark.parametrize("path", RAYSERVICE_FILES, ids=RS_IDS)
def test_rules(path):
    rs, service = rayservice_and_service(path)
    errors = rule_errors(rs, service)
    assert not errors, f"{path.name}:\n  " + "\n  ".join(errors)


def _cluster_manifest() -> tuple[dict[str, Any], dict[str, Any] | None]:
    return rayservice_and_service(K8S_DIR / "base" / "cluster" / "rayservice.yaml")


def _worker(rs):
    return rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]


def _worker_container(rs):
    return _worker(rs)["template"]["spec"]["containers"][0]


def _set_serve_config(rs, edit: Callable[[dict], None]):
    data = serve_config(rs)
    edit(data)
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(data)


MUTATIONS: list[tuple[str, Callable[[dict, dict], None], str]] = [
    ("min>max", lambda rs, s: _worker(rs).update(minReplicas=5), "minReplicas (5) > maxReplicas"),
    (
        "gpu-limit",
        lambda rs, s: _worker_container(rs)["resources"]["limits"].update({"nvidia.com/gpu": 1}),
        "GPU limit 1 != tensor_parallel_size x pipeline_parallel_size",
    ),
    (
        "tp-changed",
        lambda rs, s: _set_serve_config(
            rs, lambda d: d["applications"][0]["args"]["models"][0]["engine_args"].update(tensor_parallel_size=4)
        ),
        "GPU limit 2 != tensor_parallel_size",
    ),
    ("long-name", lambda rs, s: rs["metadata"].update(name="llm-" + "x" * 44), "<= 47 characters"),
    ("bad-name", lambda rs, s: rs["metadata"].update(name="LLM_cluster"), "DNS-1035"),
    (
        "latest",
        lambda rs, s: _worker_container(rs).update(image="registry.example.com/llm-serving:latest"),
        "not pinned",
    ),
    ("untagged", lambda rs, s: _worker_container(rs).update(image="registry.example.com/llm-serving"), "not pinned"),
    (
        "head-cpus",
        lambda rs, s: rs["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"].pop("num-cpus"),
        "num-cpus",
    ),
    ("serve-port", lambda rs, s: _set_serve_config(rs, lambda d: d["http_options"].update(port=8002)), "port 'serve'"),
    ("direct-port", lambda rs, s: _worker_container(rs)["ports"].pop(0), "port 'direct'"),
    ("root", lambda rs, s: _worker(rs)["template"]["spec"]["securityContext"].update(runAsUser=0), "runAsUser"),
    (
        "hf-token-required",
        lambda rs, s: _worker_container(rs)["env"][0]["valueFrom"]["secretKeyRef"].update(optional=False),
        "HF_TOKEN must come from secret serving-secrets key HF_TOKEN, optional",
    ),
    (
        "api-keys-optional",
        lambda rs, s: _worker_container(rs)["env"][1]["valueFrom"]["secretKeyRef"].update(optional=True),
        "SERVING_API_KEYS must come from secret serving-secrets key SERVING_API_KEYS, required",
    ),
    ("no-toleration", lambda rs, s: _worker(rs)["template"]["spec"].pop("tolerations"), "toleration"),
    ("no-node-selector", lambda rs, s: _worker(rs)["template"]["spec"].pop("nodeSelector"), "nodeSelector"),
    ("small-pod", lambda rs, s: _worker_container(rs)["resources"]["limits"].update(memory="16Gi"), "memory limit"),
    ("few-pods", lambda rs, s: _worker(rs).update(maxReplicas=2), "cannot hold max_replicas=4"),
    (
        "no-autoscaler",
        lambda rs, s: rs["spec"]["rayClusterConfig"].update(enableInTreeAutoscaling=False),
        "needs enableInTreeAutoscaling",
    ),
    (
        "kueue-autoscaler",
        lambda rs, s: rs["metadata"]["labels"].update({"kueue.x-k8s.io/queue-name": "q"}),
        "Kueue rejects",
    ),
    (
        "short-grace",
        lambda rs, s: _worker(rs)["template"]["spec"].update(terminationGracePeriodSeconds=60),
        "terminationGracePeriodSeconds",
    ),
    (
        "short-drain",
        lambda rs, s: _worker(rs)["template"]["spec"]["containers"][0]["env"].append(
            {"name": "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "value": "30"}
        ),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S",
    ),
    (
        "no-drain",
        lambda rs, s: _worker(rs)["template"]["spec"]["containers"][0].update(
            env=[e for e in _worker(rs)["template"]["spec"]["containers"][0]["env"] if "DRAIN" not in e["name"]]
        ),
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S",
    ),
    (
        "deletion-delay",
        lambda rs, s: rs["spec"].pop("rayClusterDeletionDelaySeconds"),
        "rayClusterDeletionDelaySeconds",
    ),
    (
        "selector",
        lambda rs, s: s["spec"]["selector"].update({"app.kubernetes.io/component": "ray-head"}),
        "does not select",
    ),
    ("service-port", lambda rs, s: s["spec"]["ports"][0].update(port=8001), "does not forward"),
]


@pytest.mark.parametrize("mutate, expected", [m[1:] for m in MUTATIONS], ids=[m[0] for m in MUTATIONS])
def test_rules_catch_mistakes(mutate, expected):
    rs, service = copy.deepcopy(_cluster_manifest())
    assert not rule_errors(rs, service)
    mutate(rs, service)
    errors = rule_errors(rs, service)
    assert any(expected in e for e in errors), errors


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic v1-style fields inside ray.serve
@pytest.mark.parametrize("path", RAYSERVICE_FILES, ids=RS_IDS)
def test_serve_config_is_valid(path, tmp_path):
    """serveConfigV2 passes our config models (+ vLLM's engine args) and Ray Serve's own schema."""
    from ray.serve.schema import ServeDeploySchema

    rs, _ = rayservice_and_service(path)
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(rs["spec"]["serveConfigV2"])
    data = load_serve_config(config_file)
    ServeDeploySchema.model_validate(data)
    assert data["http_options"]["host"] == "0.0.0.0", "Serve's proxy must listen on the pod IP"
    assert len(app_configs(data)) == 1


def test_serve_config_check_rejects_a_bad_config(tmp_path):
    from serving.config import ConfigError

    rs, _ = _cluster_manifest()
    _set_serve_config(rs, lambda d: d["applications"][0]["args"]["models"][0]["deployment"].update(num_gpu=2))
    bad = tmp_path / "serve.yaml"
    bad.write_text(rs["spec"]["serveConfigV2"])
    with pytest.raises(ConfigError, match="num_gpu"):
        load_serve_config(bad)


def test_multi_node_uses_the_in_tree_autoscaler():
    rs, _ = _cluster_manifest()
    cluster = rs["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    a = app_config(rs).models[0].deployment.autoscaling
    g = _worker(rs)
    assert (g["minReplicas"], g["maxReplicas"]) == (a.min_replicas, a.max_replicas)


def test_kueue_variant():
    (path,) = [ROOT / t.manifest for t in k8s.TARGETS if t.kueue_queue]
    rs, _ = rayservice_and_service(path)
    queue = rs["metadata"].get("labels", {}).get("kueue.x-k8s.io/queue-name")
    assert queue, f"{path.name} lacks the kueue.x-k8s.io/queue-name label"
    assert DNS_1123_LABEL.fullmatch(queue)
    cluster = rs["spec"]["rayClusterConfig"]
    # Kueue's RayService webhook rejects the in-tree autoscaler (without elastic jobs) and
    # reserves quota for `replicas` pods: a fixed group of the most pods Serve can use.
    assert cluster.get("enableInTreeAutoscaling") is not True
    g = _worker(rs)
    a = app_config(rs).models[0].deployment.autoscaling
    assert g["replicas"] == g["minReplicas"] == g["maxReplicas"] == a.max_replicas
    for other in RAYSERVICE_FILES:
        if other != path:
            labels = rayservice_and_service(other)[0]["metadata"].get("labels", {})
            assert "kueue.x-k8s.io/queue-name" not in labels, f"{file_id(other)} should not be queued"


# -- (iv) drift -----------------------------------------------------------------------------


GENERATED = k8s.generated_files()


@pytest.mark.parametrize("path", GENERATED, ids=[file_id(p) for p in GENERATED])
def test_generated_file_is_up_to_date(path):
    committed = path.read_text() if path.exists() else None
    assert GENERATED[path] == committed, (
        f"{file_id(path)} is out of date with its source (configs/, observability/) or serving_k8s/render.py; "
        "regenerate with:\n  python -m serving_k8s render-all"
    )


def test_render_all_check_mode(capsys):
    """`render-all --check` is what CI and contributors run: it passes on the committed tree."""
    assert k8s.main(["render-all", "--check"]) == 0
    out = capsys.readouterr().out
    assert all(f"{p}: up to date" in out for p in GENERATED)


def test_render_base_writes_a_kustomize_base(tmp_path):
    """`render --base DIR`, the way to a base of one's own config: the same text render-all commits."""
    target = next(t for t in k8s.TARGETS if t.kind == "single-gpu")
    base = tmp_path / "base"
    args = ["render", target.config, "--kind", target.kind, "--model-cache", target.model_cache]
    assert k8s.main([*args, "--base", str(base)]) == 0
    assert k8s.main([*args, "--base", str(base), "--check"]) == 0
    committed = yaml.safe_load_all((ROOT / target.manifest).read_text())
    assert list(yaml.safe_load_all((base / k8s.MANIFEST).read_text())) == list(committed)
    kustomization = yaml.safe_load((base / k8s.KUSTOMIZATION).read_text())
    assert kustomization["resources"] == [k8s.MANIFEST]


def test_render_cli_check_mode(tmp_path, capsys):
    target = next(t for t in k8s.TARGETS if t.kind == "single-gpu")
    out = tmp_path / "m.yaml"
    assert k8s.main(["render", target.config, "--kind", target.kind, "-o", str(out)]) == 0
    assert k8s.main(["render", target.config, "--kind", target.kind, "-o", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("maxReplicas: 1", "maxReplicas: 2"))
    assert k8s.main(["render", target.config, "--kind", target.kind, "-o", str(out), "--check"]) == 1
    assert "out of date" in capsys.readouterr().err


@pytest.mark.parametrize(
    "edit, message",
    [
        # The config check (`python -m serving check`) or the renderer, whichever sees it first.
        (
            lambda d: d["applications"][0]["args"]["models"][0]["deployment"].update(num_gpus=1),
            "must equal|set num_gpus: 2",
        ),
        (
            lambda d: d["applications"][0]["args"]["models"][0]["engine_args"].pop("distributed_executor_backend"),
            "distributed_executor_backend",
        ),
        (lambda d: d["http_options"].update(host="127.0.0.1"), "http_options.host"),
        (lambda d: d["applications"][0]["args"]["ingress"].update(port=8001), "must differ"),
        (lambda d: d["applications"][0]["args"].update(auth="open"), "auth: open is for development"),
        (
            lambda d: d["applications"][0]["args"].update(auth={"api_keys_env": "MY_KEYS"}),
            "api_keys_env must be SERVING_API_KEYS",
        ),
    ],
    ids=["num-gpus-vs-tp", "tp-without-mp", "proxy-on-localhost", "port-clash", "auth-open", "auth-other-env"],
)
def test_renderer_refuses_inconsistent_configs(edit, message, tmp_path):
    data = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    edit(data)
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(data))
    from serving.config import ConfigError

    with pytest.raises((k8s.RenderError, ConfigError), match=message):
        k8s.build_objects(config, "multi-node")


def test_custom_resources_are_offered_by_the_worker_group(tmp_path, rayservice_schema):
    """A model pinned by custom resources gets a worker group that offers them (else it never schedules)."""
    data = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    data["applications"][0]["args"]["models"][0]["deployment"]["resources"] = {"pool-a": 1, "big": 1000001}
    config = tmp_path / "pinned.yaml"
    config.write_text(yaml.safe_dump(data))
    rs = next(o for o in k8s.build_objects(config, "multi-node") if o["kind"] == "RayService")
    assert _worker(rs)["resources"] == {"big": "1000001", "pool-a": "1"}  # exact: "1e+06" would be less
    assert not schema_errors(rayservice_schema, rs)
    assert "resources" not in _worker(_cluster_manifest()[0])


def test_tenant_keys_reach_the_pods_from_the_secret(tmp_path):
    """Each tenant's `keys_env` comes from the Secret, required (its keys fail closed); a config whose keys
    are all tenants' does not require the app's SERVING_API_KEYS."""
    data = yaml.safe_load((ROOT / "configs" / "cluster.yaml").read_text())
    data["applications"][0]["args"]["auth"] = {
        "tenants": [{"name": "search", "keys_env": "TENANT_SEARCH_KEYS", "requests_per_minute": 600}]
    }
    config = tmp_path / "tenants.yaml"
    config.write_text(yaml.safe_dump(data))
    rs = next(o for o in k8s.build_objects(config, "multi-node") if o["kind"] == "RayService")
    for _, template in pod_templates(rs):
        for c in containers(template):
            refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c.get("env", [])}
            assert refs["TENANT_SEARCH_KEYS"] == {
                "name": k8s.SECRET_NAME,
                "key": "TENANT_SEARCH_KEYS",
                "optional": False,
            }
            assert "SERVING_API_KEYS" not in refs and refs["HF_TOKEN"]["optional"] is True


def test_renderer_refuses_bad_names():
    with pytest.raises(k8s.RenderError, match="DNS-1035"):
        k8s.build_objects(ROOT / "configs" / "gpu.yaml", "single-gpu", name="a" * 48)
    with pytest.raises(k8s.RenderError, match="pinned"):
        k8s.build_objects(ROOT / "configs" / "gpu.yaml", "single-gpu", image="repo/llm-serving:latest")


# -- static manifests -------------------------------------------------------------------------


def test_podmonitor_scrapes_the_ray_and_engine_metrics_ports():
    from serving.deployments import engine_metrics

    ((path, pm),) = objects_of_kind("PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["spec"]["selector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"}  # KubeRay's label on Ray pods
    endpoints = {e["port"]: e for e in pm["spec"]["podMetricsEndpoints"]}
    assert set(endpoints) == {"metrics", "engine-metrics"}
    assert all(e.get("path", "/metrics") == "/metrics" for e in endpoints.values())
    # The port the replicas serve vLLM's own metrics on (unless told otherwise) is the one declared.
    assert (
        k8s.ENGINE_METRICS_PORT == engine_metrics.DEFAULT_PORT
        and k8s.ENGINE_METRICS_PORT_ENV == engine_metrics.PORT_ENV
    )
    for rs_path in RAYSERVICE_FILES:
        rs, _ = rayservice_and_service(rs_path)
        for role, template in pod_templates(rs):
            ports = ports_by_name(containers(template)[0])
            assert ports.get("metrics") == 8080, f"{file_id(rs_path)} {role}: no 'metrics' port 8080"
            if role.startswith("worker"):
                assert ports.get("engine-metrics") == k8s.ENGINE_METRICS_PORT, f"{file_id(rs_path)} {role}"
                env = {e["name"]: e.get("value") for e in containers(template)[0]["env"]}
                assert env[engine_metrics.PORT_ENV] == str(ports["engine-metrics"])


SECRET_EXAMPLE = K8S_DIR / "examples" / "serving-secrets.env"


def test_secret_example_is_placeholders_and_no_manifest():
    """The example is an env file for `kubectl create secret --from-env-file`, never a manifest: no apply of
    the repository can overwrite a real Secret with it. Its keys are the ones the pods read."""
    from serving.api.security import EXAMPLE_KEYS

    text = SECRET_EXAMPLE.read_text()
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    )
    assert set(values) == set(k8s.SECRET_KEYS)
    for key, value in values.items():
        assert "replace-me" in value, f"{key} must be a placeholder"
        assert not re.search(r"hf_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,}", value), f"{key} looks like a real secret"
    # The application refuses every example key (auth fails closed on a copy applied unedited).
    assert set(values["SERVING_API_KEYS"].split(",")) <= EXAMPLE_KEYS
    assert f"--from-env-file={SECRET_EXAMPLE.name}" in text
    for path in K8S_DIR.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        assert "secretGenerator" not in kustomization, f"{file_id(path)} generates a Secret"
        assert SECRET_EXAMPLE.name not in json.dumps(kustomization), f"{file_id(path)} uses the example"


def test_secret_example_makes_the_secret_the_pods_read(tmp_path):
    """`kubectl create secret generic --from-env-file` (client-side, no cluster) gives the Secret the pods read."""
    out = subprocess.run(
        [
            "kubectl",
            "create",
            "secret",
            "generic",
            k8s.SECRET_NAME,
            f"--from-env-file={SECRET_EXAMPLE}",
            "--dry-run=client",
            "-o",
            "yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    secret = yaml.safe_load(out)
    assert secret["metadata"]["name"] == k8s.SECRET_NAME
    assert set(secret["data"]) == set(k8s.SECRET_KEYS)


def test_docs_reference_existing_files():
    doc = (ROOT / "docs" / "laptop-to-cluster.md").read_text()
    referenced = set(re.findall(r"\b((?:k8s|configs|observability)/[\w./-]*[\w-])", doc))
    assert referenced, "the guide should name the manifests it applies"
    missing = sorted(p for p in referenced if not (ROOT / p).exists())
    assert not missing, f"docs/laptop-to-cluster.md references missing files: {missing}"
    for overlay in (K8S_DIR / "overlays").iterdir():
        assert f"kubectl apply -k k8s/overlays/{overlay.name}" in doc, f"the guide does not install {overlay.name}"


# -- the CPU variant, model cache, disruption budget ------------------------------------------------


def _objects(path: Path) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in load_documents(path)}


def _target_objects(kind: str) -> list[tuple[k8s.Target, dict[str, dict[str, Any]]]]:
    return [(t, _objects(ROOT / t.manifest)) for t in k8s.TARGETS if t.kind == kind or kind == "*"]


def test_cpu_variant_runs_the_built_in_model_without_gpus():
    ((target, objs),) = _target_objects("cpu")
    rs = objs["RayService"]
    (model,) = app_config(rs).models
    # The CPU image builds the tiny model in (the Dockerfile's `python -m serving build-model`): no download.
    assert model.source.startswith("builtin:") and model.deployment.num_gpus == 0
    assert "serving build-model" in (ROOT / "Dockerfile").read_text()
    for role, template in pod_templates(rs):
        spec = template["spec"]
        assert "nodeSelector" not in spec and "tolerations" not in spec, f"{role}: no GPU node needed"
        for c in containers(template):
            assert "nvidia.com/gpu" not in c["resources"]["limits"]
            assert c["image"] == f"{k8s.IMAGE_REPOSITORY}:{k8s.project_version()}-cpu", "the EXTRA=cpu build"
    c = _worker_container(rs)
    # The replica's CPUs, plus one for vLLM's engine-core process.
    assert quantity(c["resources"]["limits"]["cpu"]) >= math.ceil(model.deployment.num_cpus) + 1
    assert not rule_errors(rs, objs.get("Service"))


def test_ephemeral_storage_is_requested_for_what_lands_on_the_node():
    """Every Ray container requests ephemeral storage (Ray's logs and session files); a worker whose model
    cache is an emptyDir requests its size on top. A PVC-backed cache is a claim the base renders."""
    for target, objs in _target_objects("*"):
        rs = objs["RayService"]
        for role, template in pod_templates(rs):
            volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
            for c in containers(template):
                requests, limits = c["resources"]["requests"], c["resources"]["limits"]
                assert "ephemeral-storage" in requests and requests == limits, f"{target.output} {role}"
                disk = sum(
                    quantity(volumes[m["name"]]["emptyDir"]["sizeLimit"])
                    for m in c.get("volumeMounts", [])
                    if "emptyDir" in volumes[m["name"]] and volumes[m["name"]]["emptyDir"].get("medium") != "Memory"
                )
                assert quantity(requests["ephemeral-storage"]) > disk, f"{target.output} {role}: {requests}"
        cache = {v["name"]: v for v in _worker(rs)["template"]["spec"]["volumes"]}["model-cache"]
        mount = {m["name"]: m for m in _worker_container(rs)["volumeMounts"]}["model-cache"]
        assert mount["mountPath"] == k8s.HF_HOME and k8s.HF_HOME in (ROOT / "Dockerfile").read_text()
        if target.model_cache == "pvc":
            claim = objs["PersistentVolumeClaim"]
            assert cache["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            many = _worker(rs)["maxReplicas"] > 1
            assert claim["spec"]["accessModes"] == ["ReadWriteMany" if many else "ReadWriteOnce"]
        else:
            assert "emptyDir" in cache and "PersistentVolumeClaim" not in objs


def test_model_cache_on_an_existing_read_only_claim():
    objs = k8s.build_objects(ROOT / "configs" / "cluster.yaml", "multi-node", model_cache="claim:qwen-weights")
    assert [o["kind"] for o in objs] == ["RayService", "Service", "PodDisruptionBudget"]  # no claim rendered
    rs = objs[0]
    cache = {v["name"]: v for v in _worker(rs)["template"]["spec"]["volumes"]}["model-cache"]
    assert cache["persistentVolumeClaim"] == {"claimName": "qwen-weights", "readOnly": True}
    c = _worker_container(rs)
    assert {m["name"]: m for m in c["volumeMounts"]}["model-cache"]["readOnly"] is True
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in c["env"]  # nothing to download, nowhere to write
    assert "ephemeral-storage" in c["resources"]["requests"]
    assert not k8s_errors(as_pod(_worker(rs)["template"], "w"))
    for bad in ("claim:", "claim:Bad_Name", "hostpath", "pvc:x"):
        with pytest.raises(k8s.RenderError, match="--model-cache"):
            k8s.build_objects(ROOT / "configs" / "cluster.yaml", "multi-node", model_cache=bad)


def test_disruption_budget_covers_the_workers_one_at_a_time():
    for target, objs in _target_objects("*"):
        rs, pdb = objs["RayService"], objs["PodDisruptionBudget"]
        selector = pdb["spec"]["selector"]["matchLabels"]
        worker = {**_worker(rs)["template"]["metadata"]["labels"], "ray.io/node-type": "worker"}
        head = {**rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]}
        assert all(worker.get(k) == v for k, v in selector.items()), f"{target.output}: PDB misses the workers"
        assert not all(head.get(k) == v for k, v in selector.items()), f"{target.output}: PDB selects the head"
        # A budget that allows no eviction would block every node drain (one worker pod: minAvailable 1).
        assert pdb["spec"].get("maxUnavailable") == 1 and "minAvailable" not in pdb["spec"]
        names = [o["metadata"]["name"] for o in objs.values()]
        assert all(n == rs["metadata"]["name"] or n.startswith(rs["metadata"]["name"] + "-") for n in names)


def test_renderer_matches_kind_and_config():
    with pytest.raises(k8s.RenderError, match="runs on CPUs"):
        k8s.build_objects(ROOT / "configs" / "gpu.yaml", "cpu")
    with pytest.raises(k8s.RenderError, match="needs a GPU model"):
        k8s.build_objects(ROOT / "k8s" / "configs" / "cpu.yaml", "single-gpu")
    # configs/dev.yaml serves without keys: not for a cluster (k8s/configs/cpu.yaml is its keyed twin).
    with pytest.raises(k8s.RenderError, match="auth: open"):
        k8s.build_objects(ROOT / "configs" / "dev.yaml", "cpu")


# -- monitoring ---------------------------------------------------------------------------------------


def test_prometheus_rule_is_the_alerts_file():
    alerts = ROOT / k8s.ALERTS_FILE
    rules = objects_of_kind("PrometheusRule")
    if not alerts.exists():
        assert not rules
        return
    ((path, rule),) = rules
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == yaml.safe_load(alerts.read_text())["groups"]
    for group in rule["spec"]["groups"]:
        assert group["name"] and group["rules"]
        for r in group["rules"]:
            assert {"alert", "expr"} <= r.keys() and r.get("labels", {}).get("severity"), r
            # What the PrometheusRule CRD accepts: string label and annotation values, Prometheus durations.
            for field in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in r.get(field, {}).values()), (r["alert"], field)
            assert re.fullmatch(r"0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?", r.get("for", "0")), r
    assert rule["metadata"]["labels"]["release"] == "prometheus"  # kube-prometheus-stack's ruleSelector


def test_dashboard_configmap_for_the_grafana_sidecar():
    ((path, cm),) = [(p, o) for p, o in objects_of_kind("ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = cm["data"].values()
    assert json.loads(text) == json.loads((ROOT / k8s.DASHBOARD_FILE).read_text())
    # `kubectl apply` (client-side) keeps the whole object in an annotation of at most 256 KiB.
    assert len(json.dumps(cm)) < 256 * 1024
    with pytest.raises(json.JSONDecodeError):
        bad = ROOT / "tests" / "k8s" / "conftest.py"  # not JSON: the renderer refuses a broken dashboard
        k8s.dashboard_configmap(bad)


def test_quantity_parser():
    assert quantity("500m") == 0.5 and quantity("55Gi") == 55 * 2**30 and quantity(2) == 2
    with pytest.raises(AssertionError):
        quantity("lots")
