"""Replica autoscaling under a load ramp: Ray Serve's autoscaler on a simulated-engine deployment.

Proxy mode (Serve's proxy -> ingress deployment -> handle -> LLM deployment),
so Serve counts every ongoing request. The simulated engine makes each request
last a couple of seconds at almost no CPU, so a few dozen concurrent streams
are enough to need 4 replicas on a 2-core machine. Own free ports.

The replica count is read from the processes of this `serve run`: each Serve
replica is an actor process titled `ray::ServeReplica:<app>:<deployment>`
among the descendants of the `serve run` process (no dashboard or Ray address
to discover, and other clusters on the machine are never counted).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import psutil
import pytest

from loadtests.servers import ServeProcess, free_ports
from tests.e2e.conftest import start_stack

INGRESS_PORT, PROXY_PORT = free_ports(2)
URL = f"http://127.0.0.1:{PROXY_PORT}"
APP, MODEL = "autoscale", "sim-autoscale"
DEPLOYMENT = "llm-sim-autoscale"

CONFIG = {
    "proxy_location": "EveryNode",
    "http_options": {"host": "127.0.0.1", "port": PROXY_PORT},
    "applications": [
        {
            "name": APP,
            "route_prefix": "/",
            "import_path": "serving.deployments.app:build_app",
            "args": {
                "ingress": {"mode": "proxy", "port": INGRESS_PORT, "num_cpus": 0.05},
                "auth": "open",
                "models": [
                    {
                        "id": MODEL,
                        "engine": "simulator",
                        # ~2 s per request (20 tokens x 0.1 s) at next to no CPU.
                        "engine_args": {"decode_s_per_token": 0.1, "ttft_base_s": 0.05, "max_model_len": 2048},
                        "deployment": {
                            "num_cpus": 0.05,
                            "max_ongoing_requests": 8,
                            "graceful_shutdown_timeout_s": 5,
                            "health_check_period_s": 2,
                            "autoscaling": {
                                "min_replicas": 1,
                                "max_replicas": 4,
                                "target_ongoing_requests": 2,
                                "upscale_delay_s": 1,
                                "downscale_delay_s": 3,
                                "metrics_interval_s": 0.5,
                                "look_back_period_s": 2,
                            },
                        },
                    }
                ],
            },
        }
    ],
}


def replica_count(server: ServeProcess) -> int:
    title = f"ServeReplica:{APP}:{DEPLOYMENT}"
    n = 0
    for p in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if title in " ".join(p.cmdline()) or title in p.name():
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return n


def wait_for(predicate, timeout_s: float, interval_s: float = 0.5) -> float | None:
    """Seconds until `predicate()` held, or None after `timeout_s`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        time.sleep(interval_s)
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve-autoscaling.log"
    with start_stack(CONFIG, log) as s:
        yield s


async def load(stop: asyncio.Event, concurrency: int, max_requests: int, max_s: float) -> dict[str, int]:
    """`concurrency` clients streaming completions back to back until `stop`, a count or a time bound."""
    counts = {"ok": 0, "failed": 0}
    started = 0
    deadline = time.monotonic() + max_s

    async def client_loop(client: httpx.AsyncClient):
        nonlocal started
        while not stop.is_set() and started < max_requests and time.monotonic() < deadline:
            started += 1
            body = {"model": MODEL, "prompt": f"request {started}", "max_tokens": 20, "stream": True}
            try:
                async with client.stream("POST", "/v1/completions", json=body) as r:
                    ok = r.status_code == 200
                    async for _ in r.aiter_bytes():
                        pass
                counts["ok" if ok else "failed"] += 1
            except httpx.HTTPError:
                counts["failed"] += 1
                await asyncio.sleep(0.2)

    async with httpx.AsyncClient(base_url=URL, timeout=60) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    return counts


def test_scales_up_under_load_and_back_down(server):
    assert wait_for(lambda: replica_count(server) == 1, 60) is not None, "did not settle at min_replicas=1"

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(load(stop, concurrency=16, max_requests=2000, max_s=150))
        peak = 1
        t0 = time.monotonic()
        up_after = None
        while time.monotonic() - t0 < 120 and not task.done():
            peak = max(peak, replica_count(server))
            if peak >= 3 and up_after is None:
                up_after = time.monotonic() - t0
                # Keep the load a little longer so the new replicas take traffic, then stop.
                await asyncio.sleep(3)
                break
            await asyncio.sleep(0.5)
        stop.set()
        counts = await task
        return up_after, peak, counts

    up_after, peak, counts = asyncio.run(scenario())
    assert up_after is not None, f"never reached 3 replicas under load (peak {peak}); log: {server.log_path}"
    assert up_after < 90
    assert counts["ok"] > 0 and counts["failed"] <= counts["ok"] * 0.05, counts
    # Load stopped: downscale_delay_s 3 + graceful shutdown (5 s) + look-back: well within a minute.
    down_after = wait_for(lambda: replica_count(server) == 1, 90)
    assert down_after is not None, f"still {replica_count(server)} replicas 90 s after the load stopped"
    print(
        f"\nautoscaling: 1 -> {peak} replicas {up_after:.1f} s after the load started, "
        f"back to 1 {down_after:.1f} s after it stopped ({counts['ok']} requests)"
    )
    # Still serving after scaling down.
    r = httpx.post(f"{URL}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200
