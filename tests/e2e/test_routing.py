"""Request-level routing on the fast path, on a real Serve stack: simulated replicas behind one direct port.

Direct mode, `routing: request` (the default): every replica binds the shared
port (SO_REUSEPORT, the kernel spreads connections) and a port of its own;
each request is placed by the scheduler wherever it entered and forwarded as
bytes when its replica is another (serving/routing/). The response header
`x-serving-replica` says which replica served it.

Before (connection-level balancing), one openai client with a connection pool
sent all its requests to the replicas its connections had landed on: with 4
threads against 4 replicas, 200 / 101 / 99 / 0 requests; replicas added later
got nothing from it. The simulated engine: the host has 2 cores, and what is
measured here is placement, not generation.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from openai import OpenAI

from loadtests.servers import free_ports
from serving.api.forwarded import REPLICA_HEADER
from tests.e2e.conftest import start_stack

DIRECT, PROXY = free_ports(2)
MODEL = "sim-routed"


def config(replicas: int) -> dict:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": PROXY},
        "applications": [
            {
                "name": "routed",
                "route_prefix": "/",
                "import_path": "serving.deployments.app:build_app",
                "args": {
                    "ingress": {"mode": "direct", "host": "127.0.0.1", "port": DIRECT},
                    "auth": "open",
                    "models": [
                        {
                            "id": MODEL,
                            "engine": "simulator",
                            "engine_args": {"decode_s_per_token": 0.005, "ttft_base_s": 0.01, "max_model_len": 4096},
                            "deployment": {
                                "num_cpus": 0.05,
                                "graceful_shutdown_timeout_s": 5,
                                "autoscaling": {"min_replicas": replicas, "max_replicas": replicas},
                            },
                        }
                    ],
                },
            }
        ],
    }


def served_by(client: OpenAI, prompt: str) -> str:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=4
    )
    return raw.headers[REPLICA_HEADER]


def wait_for_replicas(n: int, timeout_s: float = 60) -> set[str]:
    """Until n distinct replicas answer (fresh connections, distinct prompts)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    i = 0
    while len(seen) < n and time.monotonic() < deadline:
        with OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", max_retries=0) as c:
            seen.add(served_by(c, f"probe {i}"))
        i += 1
    return seen


def test_one_pooled_client_is_spread_over_every_replica_and_reaches_replicas_added_later(tmp_path):
    data = config(2)
    with start_stack(data, tmp_path / "serve.log") as server:
        client = OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", max_retries=0, timeout=30)
        assert len(wait_for_replicas(2)) == 2, "the replicas never all answered"
        # Warm the pool: 4 threads, so 4 connections, each landed on whichever replica the kernel chose.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: served_by(client, f"warm {i}"), range(8)))

        data["applications"][0]["args"]["models"][0]["deployment"]["autoscaling"] = {
            "min_replicas": 4,
            "max_replicas": 4,
        }
        assert server.deploy(data).returncode == 0
        assert len(wait_for_replicas(4, timeout_s=120)) == 4, "the added replicas never answered"

        with ThreadPoolExecutor(4) as pool:
            counts = Counter(pool.map(lambda i: served_by(client, f"question {i} about something else"), range(400)))
        print(f"\none pooled client, 4 threads, 400 distinct prompts, 4 replicas: {sorted(counts.values())}")
        assert len(counts) == 4, counts  # the replicas added after the pool was made get requests from it
        assert max(counts.values()) <= 1.5 * 100, counts

        # One prompt, from fresh connections (wherever the kernel lands them): one replica serves it.
        where = set()
        for _ in range(8):
            with OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", max_retries=0) as fresh:
                where.add(served_by(fresh, "You are a support agent for ACME. " * 20))
        assert len(where) == 1, where


def test_a_stream_forwarded_to_another_replica_streams(tmp_path):
    """Each chunk arrives as the serving replica writes it: the first within the TTFT, not with the last."""
    with start_stack(config(2), tmp_path / "serve.log"):
        assert len(wait_for_replicas(2)) == 2
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "stream": True}
        seen = set()
        for i in range(20):
            body["messages"][0]["content"] = f"stream {i}"
            with (
                httpx.Client(timeout=30) as http,
                http.stream("POST", f"http://127.0.0.1:{DIRECT}/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200
                t0 = time.monotonic()
                arrivals = [time.monotonic() - t0 for _ in r.iter_bytes()]
                seen.add(r.headers[REPLICA_HEADER])
            # 200 tokens at 5 ms: ~1 s of stream, in many pieces over that time.
            assert len(arrivals) > 20 and arrivals[-1] - arrivals[0] > 0.5, arrivals[:5]
        assert len(seen) == 2, seen
