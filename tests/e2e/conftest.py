"""The end-to-end suite: Ray Serve with the real vLLM engine, started as users start it.

Every test under tests/e2e is marked `e2e` by tests/conftest.py (so `-m "not e2e"`
leaves them all out). Servers take free ports: the dev stack's direct and proxy
ports are picked when this module loads, and each module that needs a server of
its own (another config, faults that replace replicas) starts it from a
module-scoped fixture with `dev_config()` on ports of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from loadtests.servers import ROOT, ServeProcess, free_ports

DIRECT_PORT, PROXY_PORT = free_ports(2)
DIRECT_URL = f"http://127.0.0.1:{DIRECT_PORT}"
PROXY_URL = f"http://127.0.0.1:{PROXY_PORT}"
# The dev stack runs with API keys in the tests (from the environment, as in production).
API_KEY = "sk-e2e-test-key-0001"
OTHER_KEY = "sk-e2e-second-key-0002"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
REPLICA = "ServeReplica:llm:llm-tiny-llama"  # dev.yaml's LLM-server replica, by its process title


def dev_config(
    direct_port: int, proxy_port: int, path: Path = ROOT / "configs" / "dev.yaml", *, keys: bool = False
) -> dict[str, Any]:
    """A shipped config as data, served on the given ports (and only on loopback).

    `keys`: API keys from SERVING_API_KEYS, as in production, instead of the laptop configs' `auth: open`.
    """
    data = yaml.safe_load(path.read_text())
    data["http_options"].update(host="127.0.0.1", port=proxy_port)
    args = data["applications"][0]["args"]
    args["ingress"].update(host="127.0.0.1", port=direct_port)
    if keys:
        args["auth"] = {"api_keys_env": "SERVING_API_KEYS"}
    return data


def start_stack(
    data: dict[str, Any], log: Path, *, env: dict[str, str] | None = None, timeout_s: float = 300
) -> ServeProcess:
    """`serve run` on `data`, ready when its direct ingress (or, in proxy mode, Serve's proxy) answers /ready."""
    args = data["applications"][0]["args"]
    if args.get("ingress", {}).get("mode", "direct") == "direct":
        port = args["ingress"]["port"]
    else:
        port = data["http_options"]["port"]
    return ServeProcess.from_dict(data, f"http://127.0.0.1:{port}/ready", log, env).start(timeout_s=timeout_s)


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory):
    """configs/dev.yaml served as the README's first command does (on free ports, with keys), once per test run."""
    log = tmp_path_factory.mktemp("serve") / "serve-dev.log"
    keys = {"SERVING_API_KEYS": f"{API_KEY},{OTHER_KEY}"}
    with start_stack(dev_config(DIRECT_PORT, PROXY_PORT, keys=True), log, env=keys) as server:
        yield server


@pytest.fixture(scope="session", params=["direct", "proxy"])
def base_url(request, dev_server):
    return {"direct": DIRECT_URL, "proxy": PROXY_URL}[request.param]


@pytest.fixture(scope="session")
def client(dev_server):
    return OpenAI(base_url=f"{DIRECT_URL}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def proxy_client(dev_server):
    """Serve's proxy path of the dev stack (another process than the direct ingress: the ingress deployment's)."""
    return OpenAI(base_url=f"{PROXY_URL}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="session")
def any_client(base_url):
    """The same tests through the direct ingress and through Serve's proxy path."""
    return OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
