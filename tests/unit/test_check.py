"""`python -m serving check`: every rule `serve run` and the renderer apply, each with a config they refuse.

Ray is imported (its schema, its deployment options, its app builder) but never started: the
fast suite's conftest fails a test that starts Ray or an engine.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.__main__ import main
from serving.check import check, rendered_kinds
from serving_k8s import render

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "k8s" / "configs").glob("*.yaml"))


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def write(tmp_path: Path, data: dict[str, Any], name: str = "serve.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def errors_of(tmp_path: Path, data: dict[str, Any], k8s: list[str] | None = None) -> str:
    """The errors `check` reports (k8s: the renderer's kinds to hold the file to, as `--k8s`)."""
    report = check(write(tmp_path, data), k8s)
    assert report.errors, "check took it"
    return "\n".join(report.errors)


def model(data: dict[str, Any], i: int = 0) -> dict[str, Any]:
    m: dict[str, Any] = data["applications"][0]["args"]["models"][i]
    return m


# -- shipped configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_configs_pass(path):
    report = check(path)
    assert report.errors == []
    assert "Ray Serve" in report.checked


def test_files_the_repository_renders_are_held_to_their_kind():
    assert rendered_kinds(ROOT / "configs" / "cluster.yaml") == ["multi-node"]
    assert rendered_kinds(ROOT / "configs" / "gpu.yaml") == ["single-gpu"]
    assert rendered_kinds(ROOT / "configs" / "dev.yaml") == []  # a laptop config: no cluster rules unless asked
    assert any("Kubernetes (multi-node)" in c for c in check(ROOT / "configs" / "cluster.yaml").checked)


def test_check_imports_no_engine_and_answers_fast():
    """No vLLM, no torch: importing them takes 10-20 s here."""
    code = (
        "import sys, time; t = time.monotonic(); from serving.check import check; "
        "r = check('configs/dev.yaml'); "
        "print(r.errors == [], 'vllm' in sys.modules, 'torch' in sys.modules, round(time.monotonic() - t, 2))"
    )
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
    ok, vllm_loaded, torch_loaded, _ = out.stdout.split()
    assert (ok, vllm_loaded, torch_loaded) == ("True", "False", "False"), out.stderr
    assert wall < 20  # the whole process; ~2 s on an idle 2-core machine (docs/configuration.md)


# -- the config and the engines (serving.engine.factory, also run by serve run's build) --------------


def test_engine_arg_type_names_its_key_path(tmp_path):
    data = load("dev.yaml")
    model(data)["engine_args"]["max_model_len"] = "2k"
    msg = errors_of(tmp_path, data)
    assert "applications.0.args.models.0.engine_args.max_model_len: Input should be a valid integer" in msg


def test_null_where_vllm_s_default_is_none(tmp_path):
    """`max_model_len: null` (vLLM's default: the model's length) is no type error."""
    data = load("dev.yaml")
    model(data)["engine_args"]["max_model_len"] = None
    report = check(write(tmp_path, data))
    assert report.errors == []
    assert "config and engine_args" in report.checked


def test_fewer_gpus_than_vllm_workers(tmp_path):
    """vLLM's mp workers each need a GPU the replica holds: 1 GPU for TP 2 fails at engine start."""
    data = load("cluster.yaml")
    model(data)["deployment"]["num_gpus"] = 1
    msg = errors_of(tmp_path, data, k8s=[])
    assert "applications.0.args.models.0.deployment.num_gpus: 1 GPU(s) for tensor_parallel_size x " in msg
    assert "set num_gpus: 2" in msg


def test_a_fraction_of_a_gpu_for_several_workers(tmp_path):
    data = load("cluster.yaml")
    model(data)["deployment"]["num_gpus"] = 0.5
    msg = errors_of(tmp_path, data, k8s=[])
    assert "models.0.deployment.num_gpus: 0.5 is a fraction of a GPU" in msg


# -- Ray Serve's rules --------------------------------------------------------------------------------


def test_ray_schema(tmp_path):
    data = load("dev.yaml")
    data["proxy_location"] = "Everywhere"
    data["http_options"]["port"] = "eighty"
    msg = errors_of(tmp_path, data)
    assert "proxy_location: Input should be 'Disabled', 'HeadOnly' or 'EveryNode'" in msg
    assert "http_options.port: Input should be a valid integer" in msg


def test_ray_schema_duplicate_application_names(tmp_path):
    data = load("dev.yaml")
    data["applications"].append(copy.deepcopy(data["applications"][0]))
    data["applications"][1]["route_prefix"] = "/other"
    assert 'applications: Found multiple configs for application "llm"' in errors_of(tmp_path, data)


def test_keys_ray_would_ignore_suggest_the_right_one(tmp_path):
    data = load("dev.yaml")
    data["http_option"] = data.pop("http_options")
    data["applications"][0]["route_prefx"] = data["applications"][0].pop("route_prefix")
    data["applications"][0]["deployments"] = [{"name": "llm-tiny-llama", "ray_actor_options": {"num_cpu": 1}}]
    msg = errors_of(tmp_path, data)
    assert "http_option: unknown key 'http_option' (Ray Serve would ignore it) (did you mean 'http_options'?)" in msg
    assert "applications.0.route_prefx: unknown key 'route_prefx'" in msg and "'route_prefix'?" in msg
    assert "applications.0.deployments.0.ray_actor_options.num_cpu: unknown key 'num_cpu'" in msg


def test_deployment_options_ray_refuses(tmp_path):
    """Our config takes max_replicas_per_node 101; Ray Serve's deployment options do not (at most 100)."""
    data = load("dev.yaml")
    model(data)["deployment"]["max_replicas_per_node"] = 101
    msg = errors_of(tmp_path, data)
    assert "applications.0.args.models.0.deployment: Ray Serve refuses this deployment:" in msg
    assert "max_replicas_per_node 101" in msg


def test_override_of_a_deployment_the_app_does_not_have(tmp_path):
    """Serve's controller fails the deploy ("Deployment 'x' does not exist") after Ray has started."""
    data = load("dev.yaml")
    data["applications"][0]["deployments"] = [{"name": "llm-tiny-lama", "num_replicas": 2}]
    msg = errors_of(tmp_path, data)
    assert "applications.0.deployments.0.name: no deployment 'llm-tiny-lama' in this application" in msg
    assert "(did you mean 'llm-tiny-llama'?)" in msg


def test_override_options_ray_refuses(tmp_path):
    data = load("dev.yaml")
    data["applications"][0]["deployments"] = [
        {"name": "llm-tiny-llama", "autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}
    ]
    msg = errors_of(tmp_path, data)
    assert "applications.0.deployments.0: Ray Serve refuses these options for 'llm-tiny-llama'" in msg
    assert "max_replicas (2) must be greater than or equal to min_replicas (3)" in msg


@pytest.mark.parametrize("key", ["port", "peer_port"])
def test_direct_ingress_port_is_serve_s_proxy_port(tmp_path, key):
    """serve run takes it and serves both on the port, each connection on one by chance (SO_REUSEPORT on both)."""
    data = load("dev.yaml")
    data["applications"][0]["args"]["ingress"][key] = data["http_options"]["port"]
    msg = errors_of(tmp_path, data)
    assert f"applications.0.args.ingress.{key}: 8001 is also http_options.port (Serve's proxy)" in msg


@pytest.mark.parametrize("key", ["port", "peer_port"])
def test_no_proxy_no_proxy_port(tmp_path, key):
    """`proxy_location: Disabled`: serve run starts no proxy, so the direct ingress may take http_options.port."""
    data = load("dev.yaml")
    data["proxy_location"] = "Disabled"
    data["applications"][0]["args"]["ingress"][key] = data["http_options"]["port"]
    report = check(write(tmp_path, data))
    assert report.errors == []
    assert "Ray Serve" in report.checked


def _a_build_that_fails(data: dict[str, Any]) -> dict[str, Any]:
    data["applications"][0]["deployments"] = [{"name": "llm-tiny-lama", "num_replicas": 1}]
    return data


def test_no_build_into_a_live_cluster(tmp_path, monkeypatch):
    """In a process where Ray is initialized, building the app would register it with that cluster: not done."""
    import ray

    import serving.check

    def built(*args: Any) -> list[str]:
        raise AssertionError("the build ran with Ray initialized")

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(serving.check, "_built", built)
    report = check(write(tmp_path, _a_build_that_fails(load("dev.yaml"))))
    assert report.errors == []
    assert any("Ray is initialized in this process: the applications were not built" in n for n in report.notes)
    assert report.checked[1] == "Ray Serve (not the build)"
    # the rest of Ray's rules still hold
    data = load("dev.yaml")
    data["http_option"] = {}
    assert "http_option: unknown key 'http_option'" in errors_of(tmp_path, data)


def test_no_auto_connect_though_ray_was_imported_before(tmp_path, monkeypatch):
    """Ray reads RAY_ENABLE_AUTO_CONNECT at its first import: in a process that imported it before, the
    variable alone would not stop the build's first Ray call from connecting to (or starting) a cluster."""
    from ray._private import auto_init_hook

    import serving.check

    monkeypatch.setattr(auto_init_hook, "enable_auto_connect", True)  # as read at an import without the variable
    seen = []
    real = serving.check._built

    def built(*args: Any) -> list[str]:
        seen.append(auto_init_hook.enable_auto_connect)
        return real(*args)

    monkeypatch.setattr(serving.check, "_built", built)
    assert "llm-tiny-lama" in errors_of(tmp_path, _a_build_that_fails(load("dev.yaml")))
    assert seen == [False]
    assert auto_init_hook.enable_auto_connect is True  # restored


def test_missing_api_keys_are_a_note_not_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("SERVING_API_KEYS", raising=False)
    report = check(ROOT / "configs" / "gpu.yaml")
    assert report.errors == []
    assert any("SERVING_API_KEYS" in n for n in report.notes)


def test_ray_warnings_become_notes(tmp_path):
    data = load("dev.yaml")
    model(data)["deployment"]["autoscaling"].update(metrics_interval_s=20, look_back_period_s=5)
    report = check(write(tmp_path, data))
    assert report.errors == []
    assert any("look_back_period_s" in n for n in report.notes)


# -- the renderer's rules (Kubernetes) --------------------------------------------------------------------


def _renderer_refuses(path: Path, kind: str) -> str:
    with pytest.raises(render.RenderError) as info:
        render.build_objects(path, kind)
    return str(info.value)


def test_gpus_must_equal_tensor_x_pipeline_parallel_for_kubernetes(tmp_path):
    """serve run takes 4 GPUs for TP 2 (2 idle); the renderer sizes pods by TP x PP and refuses it."""
    data = load("cluster.yaml")
    model(data)["deployment"]["num_gpus"] = 4
    path = write(tmp_path, data)
    assert "num_gpus" in _renderer_refuses(path, "multi-node")
    assert check(path, []).errors == []  # not a serve run rule
    msg = "\n".join(check(path, ["multi-node"]).errors)
    assert "Kubernetes (--k8s multi-node):" in msg and "deployment.num_gpus (4) must equal" in msg


def test_serve_host_for_kubernetes(tmp_path):
    data = load("gpu.yaml")
    data["http_options"]["host"] = "127.0.0.1"
    path = write(tmp_path, data)
    assert "http_options.host" in _renderer_refuses(path, "single-gpu")
    assert "http_options.host must be 0.0.0.0" in "\n".join(check(path, ["single-gpu"]).errors)


def test_ingress_host_for_kubernetes(tmp_path):
    """serve run serves a direct ingress on 127.0.0.1 (a laptop); in a pod the Service cannot reach it."""
    data = load("gpu.yaml")
    data["applications"][0]["args"]["ingress"]["host"] = "127.0.0.1"
    path = write(tmp_path, data)
    assert "ingress.host" in _renderer_refuses(path, "single-gpu")
    assert "ingress.host must be 0.0.0.0" in "\n".join(check(path, ["single-gpu"]).errors)


def test_memory_for_kubernetes(tmp_path):
    data = load("gpu.yaml")
    del model(data)["deployment"]["memory_gib"]
    path = write(tmp_path, data)
    assert "memory_gib" in _renderer_refuses(path, "single-gpu")
    assert "memory_gib" in "\n".join(check(path, ["single-gpu"]).errors)


def test_a_laptop_config_is_held_to_cluster_rules_only_when_asked():
    dev = ROOT / "configs" / "dev.yaml"
    assert check(dev).errors == []
    errors = check(dev, ["cpu"]).errors
    assert errors and all(e.startswith("Kubernetes (--k8s cpu): ") for e in errors)
    assert "auth: open" in errors[0]


# -- the command -------------------------------------------------------------------------------------------


def test_command_ok_and_refusal(tmp_path, capsys):
    assert main(["check", str(ROOT / "configs" / "dev.yaml")]) == 0
    assert capsys.readouterr().out.startswith(f"{ROOT / 'configs' / 'dev.yaml'}: ok (")

    data = load("cluster.yaml")
    model(data)["deployment"]["num_gpus"] = 4
    path = write(tmp_path, data)
    assert main(["check", str(path)]) == 0  # serve run takes it
    assert main(["check", str(path), "--k8s", "multi-node"]) == 2
    err = capsys.readouterr().err
    assert f"invalid config in {path}:" in err and "Kubernetes (--k8s multi-node)" in err


def test_command_unknown_kind(capsys):
    assert main(["check", str(ROOT / "configs" / "dev.yaml"), "--k8s", "gpu"]) == 2
    assert "the renderer has no such kind" in capsys.readouterr().err
