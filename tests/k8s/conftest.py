"""Shared helpers for the manifest tests: loading k8s/, KubeRay's CRD schemas."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "k8s"
# KubeRay v1.7.0's CRD schemas, kept as test data (source, version and license in its README.md).
KUBERAY_DIR = Path(__file__).parent / "data" / "kuberay-v1.7.0"
# The Kubernetes version the pod templates are validated against (kubernetes-validate ships it offline).
K8S_VERSION = "1.33"


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under k8s/: not the Serve configs of k8s/configs, not kustomization.yaml."""
    return sorted(
        p
        for p in K8S_DIR.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not p.is_relative_to(K8S_DIR / "configs")
    )


def all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, obj) for path in manifest_files() for obj in load_documents(path)]


def objects_of_kind(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, obj) for path, obj in all_objects() if obj.get("kind") == kind]


def rayservice_files() -> list[Path]:
    return [path for path in manifest_files() if any(o.get("kind") == "RayService" for o in load_documents(path))]


def file_id(path: Path) -> str:
    return str(path.relative_to(K8S_DIR))


def rayservice_and_service(path: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    docs = load_documents(path)
    rayservices = [d for d in docs if d.get("kind") == "RayService"]
    services = [d for d in docs if d.get("kind") == "Service"]
    assert len(rayservices) == 1, f"{path.name}: expected one RayService, found {len(rayservices)}"
    assert len(services) <= 1, f"{path.name}: expected at most one Service, found {len(services)}"
    return rayservices[0], (services[0] if services else None)


def kuberay_schema(name: str) -> dict[str, Any]:
    return json.loads((KUBERAY_DIR / name).read_text())


# -- CRD schema semantics with jsonschema -----------------------------------------


def strict_schema(schema: Any) -> Any:
    """A copy of a CRD schema in which objects reject fields they do not declare.

    The API server prunes unknown fields silently (or rejects them with
    `kubectl apply --validate=strict`); a field the operator never sees is a
    mistake either way. Objects with `additionalProperties` (maps) or
    `x-kubernetes-preserve-unknown-fields` keep accepting anything.
    """
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items()}
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Fill in CRD `default`s the way the API server does before it validates."""
    obj = copy.deepcopy(obj)

    def walk(s: dict[str, Any], value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in (s.get("properties") or {}).items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    walk(sub, value[key])
            extra = s.get("additionalProperties")
            if isinstance(extra, dict):
                for key, item in value.items():
                    if key not in (s.get("properties") or {}):
                        walk(extra, item)
        elif isinstance(value, list) and isinstance(s.get("items"), dict):
            for item in value:
                walk(s["items"], item)

    walk(schema, obj)
    return obj


def schema_errors(schema: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Every violation of a CRD schema (after defaulting), as 'path: message'."""
    import jsonschema

    defaulted = apply_defaults(schema, obj)
    validator = jsonschema.Draft7Validator(strict_schema(schema))
    errors = sorted(validator.iter_errors(defaulted), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def object_meta_errors(obj: dict[str, Any]) -> list[str]:
    """The CRD declares `metadata` as a bare object: check it as Kubernetes' ObjectMeta."""
    import kubernetes_validate

    probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata")}
    try:
        kubernetes_validate.validate(probe, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"metadata.{'.'.join(map(str, list(exc.path)[1:]))}: {exc.message}"]
    return []


@pytest.fixture(scope="session")
def rayservice_schema() -> dict[str, Any]:
    return kuberay_schema("rayservice_v1.openapi.json")


@pytest.fixture(scope="session")
def raycluster_schema() -> dict[str, Any]:
    return kuberay_schema("raycluster_v1.openapi.json")
