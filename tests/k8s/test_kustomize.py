"""What `kubectl kustomize` makes of every overlay: exactly the objects `kubectl apply -k` would send.

Offline (kubectl's built-in kustomize, no cluster). Each overlay's output is checked as the
committed bases are (KubeRay's and Kubernetes' schemas, the rules of test_manifests.py) and
for what makes `apply -k` safe: the namespace on every object, no Secret and no example
value, names that no other install or the monitoring kustomization uses, a disruption
budget over the worker pods only. k8s/examples/custom is built too, to show that each
documented option lands where it should.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving_k8s import render as k8s
from tests.k8s.conftest import K8S_DIR, ROOT, load_documents, object_meta_errors, schema_errors
from tests.k8s.test_manifests import as_pod, containers, k8s_errors, pod_templates, rule_errors

OVERLAYS = sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").exists())
NAMESPACE = "llm"  # the overlays' namespace, as docs/laptop-to-cluster.md creates it
INSTALL_KINDS = {"RayService", "Service", "PodDisruptionBudget", "PersistentVolumeClaim"}
CORE_KINDS = {"Service", "PodDisruptionBudget", "PersistentVolumeClaim", "ConfigMap"}


def kustomize(path: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    out = {name: kustomize(K8S_DIR / "overlays" / name) for name in OVERLAYS}
    out["monitoring"] = kustomize(K8S_DIR / "monitoring")
    out["examples/custom"] = kustomize(K8S_DIR / "examples" / "custom")
    return out


def key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def test_every_base_has_an_overlay():
    assert OVERLAYS == sorted(Path(t.output).name for t in k8s.TARGETS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_are_valid(overlay, built, rayservice_schema, raycluster_schema):
    objs = built[overlay]
    assert {o["kind"] for o in objs} <= INSTALL_KINDS, f"unexpected kinds in {overlay}"
    (rs,) = of_kind(objs, "RayService")
    errors = schema_errors(rayservice_schema, rs) + object_meta_errors(rs)
    cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"}}
    errors += schema_errors(raycluster_schema, cluster | {"spec": rs["spec"]["rayClusterConfig"]})
    for role, template in pod_templates(rs):
        errors += [f"{role}: {e}" for e in k8s_errors(as_pod(template, f"{rs['metadata']['name']}-{role[:4]}"))]
    for obj in objs:
        if obj["kind"] in CORE_KINDS:
            errors += [f"{key(obj)}: {e}" for e in k8s_errors(obj)]
    services = [s for s in of_kind(objs, "Service") if s["metadata"]["name"].endswith("-direct")]
    # The rules of the bases (drain settings, ports, secrets, sizing) hold after kustomize too.
    errors += rule_errors(rs, services[0] if services else None)
    assert not errors, f"{overlay}:\n  " + "\n  ".join(errors)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_its_base_in_the_namespace(overlay, built):
    """Every object lands in the namespace; nothing else changes (the drain settings and sizes of the base
    arrive as rendered), but the image name of the cpu overlay."""
    objs = built[overlay]
    assert all(o["metadata"].get("namespace") == NAMESPACE for o in objs), [key(o) for o in objs]
    assert not of_kind(objs, "Namespace"), "`kubectl delete -k` would delete the namespace and the Secret in it"
    base = {key(o): o for o in load_documents(K8S_DIR / "base" / overlay / k8s.MANIFEST)}
    assert {key(o) for o in objs} == set(base)
    for obj in objs:
        expected = yaml.safe_load(yaml.safe_dump(base[key(obj)]))
        expected["metadata"]["namespace"] = NAMESPACE
        if overlay == "cpu" and obj["kind"] == "RayService":
            for _, template in pod_templates(expected):
                for c in containers(template):
                    c["image"] = f"llm-serving:{k8s.project_version()}-cpu"
        assert obj == expected, f"{overlay}: {key(obj)} differs from k8s/base/{overlay}"


def test_no_secret_and_no_example_value_is_ever_applied(built):
    for name, objs in built.items():
        assert not of_kind(objs, "Secret"), f"{name} would apply a Secret"
        text = yaml.safe_dump_all(objs)
        assert "replace-me" not in text, f"{name} carries an example value"
        for rs in of_kind(objs, "RayService"):
            for _, template in pod_templates(rs):
                for c in containers(template):
                    refs = [e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "valueFrom" in e]
                    assert refs and {r["name"] for r in refs} == {k8s.SECRET_NAME}, "the Secret the user creates"


def test_names_are_unique_within_and_across_installs(built):
    """Two overlays (or an overlay and the monitoring) applied to one namespace never replace each other's
    objects: every (kind, name) belongs to one of them."""
    owner: dict[tuple[str, str], str] = {}
    for name in [*OVERLAYS, "monitoring"]:
        keys = [key(o) for o in built[name]]
        assert len(keys) == len(set(keys)), f"{name} defines an object twice: {keys}"
        for k in keys:
            assert k not in owner, f"{k} is defined by both {owner[k]} and {name}"
            owner[k] = name
    # KubeRay creates Services named after each RayService: none may be one of ours (or another's).
    for name in OVERLAYS:
        for rs in of_kind(built[name], "RayService"):
            for suffix in ("head-svc", "serve-svc"):
                k = ("Service", f"{rs['metadata']['name']}-{suffix}")
                assert k not in owner, f"KubeRay's {k} of {name} clashes with {owner[k]}"
                owner[k] = name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budget_selects_the_worker_pods(overlay, built):
    objs = built[overlay]
    (rs,) = of_kind(objs, "RayService")
    (pdb,) = of_kind(objs, "PodDisruptionBudget")
    selector = pdb["spec"]["selector"]["matchLabels"]
    cluster = rs["spec"]["rayClusterConfig"]
    # KubeRay adds ray.io/node-type to the pods it creates from each template.
    workers = [
        {**g["template"]["metadata"]["labels"], "ray.io/node-type": "worker"} for g in cluster["workerGroupSpecs"]
    ]
    head = {**cluster["headGroupSpec"]["template"]["metadata"]["labels"], "ray.io/node-type": "head"}
    assert all(all(w.get(k) == v for k, v in selector.items()) for w in workers), (selector, workers)
    assert not all(head.get(k) == v for k, v in selector.items()), "the PDB must not hold the head"
    for other in OVERLAYS:  # nor another install's workers
        if other != overlay:
            (ors,) = of_kind(built[other], "RayService")
            labels = ors["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
            assert not all(labels.get(k) == v for k, v in selector.items()), f"{overlay}'s PDB selects {other}"


def test_cpu_overlay_runs_the_locally_built_image(built):
    """The image the guide builds and loads into kind: the Dockerfile's CPU build, the base's tag."""
    image = f"llm-serving:{k8s.project_version()}-cpu"
    (rs,) = of_kind(built["cpu"], "RayService")
    assert {c["image"] for _, t in pod_templates(rs) for c in containers(t)} == {image}
    assert f"-t {image}" in (ROOT / "Dockerfile").read_text()
    doc = (ROOT / "docs" / "laptop-to-cluster.md").read_text()
    assert f"kind load docker-image {image}" in doc and "--build-arg EXTRA=cpu" in doc
    assert all(c["imagePullPolicy"] == "IfNotPresent" for _, t in pod_templates(rs) for c in containers(t))


def test_gpu_overlays_cache_the_model_on_a_claim(built):
    for overlay in OVERLAYS:
        objs = built[overlay]
        (rs,) = of_kind(objs, "RayService")
        if overlay == "cpu":
            continue  # the tiny model is in the image
        (claim,) = of_kind(objs, "PersistentVolumeClaim")
        volumes = {
            v["name"]: v for v in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"]
        }
        assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_custom_example_sets_every_option(built):
    objs = built["examples/custom"]
    doc = yaml.safe_load((K8S_DIR / "examples" / "custom" / "kustomization.yaml").read_text())
    (image,) = doc["images"]
    assert {o["metadata"]["namespace"] for o in objs} == {doc["namespace"]} != {NAMESPACE}
    (rs,) = of_kind(objs, "RayService")
    templates = pod_templates(rs)
    for role, template in templates:
        spec = template["spec"]
        assert spec["priorityClassName"] == "llm-serving", role
        assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}], role
        for c in containers(template):
            assert c["image"] == f"{image['newName']}:{image['newTag']}", role
    worker = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert worker["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {t["key"] for t in worker["tolerations"]} == {"nvidia.com/gpu", "dedicated"}
    (claim,) = of_kind(objs, "PersistentVolumeClaim")
    assert claim["spec"]["storageClassName"] == "filestore-rwx"
    assert not rule_errors(rs, next(s for s in of_kind(objs, "Service") if s["metadata"]["name"].endswith("-direct")))
    for role, template in templates:
        assert not k8s_errors(as_pod(template, role.split(":")[0])), role


def test_monitoring_builds(built):
    objs = built["monitoring"]
    kinds = sorted(o["kind"] for o in objs)
    expected = ["ConfigMap", "PodMonitor"] + (["PrometheusRule"] if (ROOT / k8s.ALERTS_FILE).exists() else [])
    assert kinds == sorted(expected)
    (cm,) = of_kind(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not k8s_errors(cm)


def test_kustomize_failure_is_reported(tmp_path):
    """A broken overlay fails the build with kustomize's reason (what the fixture asserts on)."""
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - ../no-such-base\n")
    with pytest.raises(AssertionError, match="no-such-base"):
        kustomize(tmp_path)


def test_kueue_overlay_documents_a_working_queue_patch(tmp_path):
    """The patch commented in k8s/overlays/cluster-kueue (another LocalQueue) works as written."""
    text = (K8S_DIR / "overlays" / "cluster-kueue" / "kustomization.yaml").read_text()
    commented = text[text.index("# patches:") :]
    patch = yaml.safe_load("\n".join(line.removeprefix("# ") for line in commented.splitlines()))
    base = os.path.relpath(K8S_DIR / "overlays" / "cluster-kueue", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({"resources": [base], **patch}))
    (rs,) = of_kind(kustomize(tmp_path), "RayService")
    assert rs["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "my-queue"
