"""Auth fails closed at `serve run`: a config expecting keys that are not there never serves.

The application's build stops with the reason (`serve run` itself stays up,
reporting the failed deploy, as Ray Serve does for any build error): no
replica starts, nothing answers, and the log says why without showing a key.
"""

from __future__ import annotations

import time

import httpx
import pytest

from loadtests.servers import ServeProcess, free_ports
from tests.e2e.conftest import dev_config


@pytest.mark.parametrize(
    "keys, message",
    [
        (None, "SERVING_API_KEYS (auth.api_keys_env) is not set"),
        ("", "SERVING_API_KEYS (auth.api_keys_env) holds no key"),
        ("replace-me-key-1,replace-me-key-2", "is a placeholder from the examples"),
        ("sk-short", "keys must have at least 16"),
    ],
    ids=["unset", "empty", "example-secret", "short"],
)
def test_serve_run_refuses_to_serve_without_usable_keys(keys, message, tmp_path):
    direct, proxy = free_ports(2)
    log = tmp_path / "serve.log"
    server = ServeProcess.from_dict(
        dev_config(direct, proxy, keys=True), f"http://127.0.0.1:{direct}/ready", log, {"SERVING_API_KEYS": keys}
    )
    with server.launch():
        deadline = time.monotonic() + 120
        while message not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, server.tail()
            assert server.proc.poll() is None or message in log.read_text(errors="replace"), server.tail()
            time.sleep(1)
        text = log.read_text(errors="replace")
        assert "AuthSetupError" in text
        for key in (keys or "").split(","):
            if key:
                assert key not in text  # the reason, never the key
        for port in (direct, proxy):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).raise_for_status()
        assert not server.engine_processes()  # no replica, no engine
