"""vLLM's metrics served from the replicas (serving/deployments/engine_metrics.py), without Ray or an engine.

The replicas here are `ReplicaEndpoint`s over registries of their own (vLLM's names and
label sets, as its PrometheusStatLogger makes them); the node's port is a real socket on
loopback, and the expositions are parsed back with prometheus_client's parser.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from loadtests.servers import free_ports
from serving.deployments import engine_metrics
from serving.deployments.engine_metrics import (
    EngineMetricsExport,
    LabelledFamilies,
    listed_urls,
    merge_expositions,
    own_exposition,
)
from serving.deployments.metrics import counted_increase


def vllm_registry(waiting: float, tokens: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    labels = ["model_name", "engine"]
    Gauge("vllm:num_requests_waiting", "waiting", labels, registry=registry).labels("m", "0").set(waiting)
    Counter("vllm:prefix_cache_queries", "queries", labels, registry=registry).labels("m", "0").inc(tokens)
    itl = Histogram("vllm:inter_token_latency_seconds", "itl", labels, buckets=[0.01, 0.1], registry=registry)
    for gap in (0.005, 0.05, 0.5):
        itl.labels("m", "0").observe(gap)
    Counter("process_not_vllm", "other", registry=registry).inc()
    return registry


def samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_only_vllm_families_with_replica_and_model_labels():
    got = list(LabelledFamilies("r1", "tiny", vllm_registry(2, 7)).collect())
    assert {f.name for f in got} == {
        "vllm:num_requests_waiting",
        "vllm:prefix_cache_queries",
        "vllm:inter_token_latency_seconds",
    }
    for family in got:
        for s in family.samples:
            assert s.labels["replica"] == "r1" and s.labels["model"] == "tiny" and s.labels["model_name"] == "m"


def test_merged_families_keep_vllm_names_and_types_and_every_replica():
    text = merge_expositions(
        [own_exposition("r1", "tiny", vllm_registry(2, 7)), own_exposition("r2", "tiny", vllm_registry(5, 11))]
    )
    # one HELP and one TYPE per family, or Prometheus refuses the scrape
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    got = samples(text)
    waiting = {s.labels["replica"]: s.value for s in got["vllm:num_requests_waiting"]}
    assert waiting == {"r1": 2, "r2": 5}
    queries = {s.labels["replica"]: s.value for s in got["vllm:prefix_cache_queries_total"]}
    assert queries == {"r1": 7, "r2": 11}
    counts = {s.labels["replica"]: s.value for s in got["vllm:inter_token_latency_seconds_count"]}
    assert counts == {"r1": 3, "r2": 3}
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families["vllm:inter_token_latency_seconds"] == "histogram"
    assert families["vllm:prefix_cache_queries"] == "counter"
    assert "process_not_vllm" not in text


def test_merge_of_nothing_is_empty():
    assert merge_expositions([]) == ""
    assert merge_expositions(["", "\n"]) == ""


def test_the_node_port_serves_every_replica_and_passes_to_another_when_its_holder_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_metrics.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(engine_metrics, "LEADER_RETRY_S", 0.1)
    (port,) = free_ports(1)
    first = EngineMetricsExport("r1", "tiny", "node-a", "127.0.0.1", port, vllm_registry(1, 1))
    second = EngineMetricsExport("r2", "tiny", "node-a", "127.0.0.1", port, vllm_registry(4, 1))
    # another node's replica (same file system, as the test cluster's network namespaces) is not listed here
    other = EngineMetricsExport("r3", "tiny", "node-b", "127.0.0.1", free_ports(1)[0], vllm_registry(9, 1))
    try:
        assert first.node.serving and not second.node.serving

        def waiting() -> dict[str, float]:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return {s.labels["replica"]: s.value for s in samples(text).get("vllm:num_requests_waiting", [])}

        assert waiting() == {"r1": 1, "r2": 4}
        first.stop()
        deadline = time.monotonic() + 5
        while not second.node.serving and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.node.serving
        assert waiting() == {"r2": 4}  # the stopped replica is no longer listed
    finally:
        for export in (first, second, other):
            export.stop()
    with socket.socket() as s:  # the port is free again (connections of the scrapes may be in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_entries_of_dead_processes_are_dropped(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "gone.json").write_text(f'{{"url": "http://127.0.0.1:1/metrics", "pid": {dead.stdout.strip()}}}')
    (tmp_path / "live.json").write_text(f'{{"url": "http://127.0.0.1:2/metrics", "pid": {os.getpid()}}}')
    (tmp_path / "broken.json").write_text("{")
    assert listed_urls(tmp_path) == ["http://127.0.0.1:2/metrics"]
    assert not (tmp_path / "gone.json").exists()


def test_port_from_environment(monkeypatch):
    monkeypatch.delenv(engine_metrics.PORT_ENV, raising=False)
    assert engine_metrics.node_port() == 8082
    monkeypatch.setenv(engine_metrics.PORT_ENV, "0")
    assert engine_metrics.node_port() == 0


def test_cumulative_engine_counts_become_counter_increases():
    key = ("m", "r", "loads-test")
    assert counted_increase(key, 3) == 3
    assert counted_increase(key, 3) == 0
    assert counted_increase(key, 5) == 2
    assert counted_increase(key, 1) == 1  # the engine restarted: its count began again
