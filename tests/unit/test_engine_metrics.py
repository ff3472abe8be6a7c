"""vLLM's metrics served from the replicas (serving/deployments/engine_metrics.py), without Ray or an engine.

The replicas here are `ReplicaEndpoint`s over registries of their own (vLLM's names and
label sets, as its PrometheusStatLogger makes them); the node's port is a real socket on
loopback, and the expositions are parsed back with prometheus_client's parser.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.parser import text_string_to_metric_families

from loadtests.servers import free_ports
from serving.deployments import engine_metrics
from serving.deployments.engine_metrics import (
    EngineMetricsExport,
    LabelledFamilies,
    NodeEndpoint,
    ReplicaEndpoint,
    listed_urls,
    merge_expositions,
    node_exposition,
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
        stop_all(first, second, other)
    with socket.socket() as s:  # the port is free again (connections of the scrapes may be in TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_entries_of_dead_processes_are_dropped(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "gone.json").write_text(f'{{"port": 1, "pid": {dead.stdout.strip()}}}')
    (tmp_path / "live.json").write_text(f'{{"port": 2, "pid": {os.getpid()}}}')
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


LOGGER = "serving.deployments.engine_metrics"


def entry(directory: Path, name: str, body: str) -> None:
    (directory / f"{name}.json").write_text(body)


def listing(directory: Path, name: str, port: int) -> None:
    """A replica's entry, with the `url` older versions read (so these tests run on them too)."""
    entry(directory, name, json.dumps({"port": port, "url": f"http://127.0.0.1:{port}/metrics", "pid": os.getpid()}))


def raw_server(payload: bytes | None) -> tuple[int, socket.socket]:
    """A loopback TCP port answering every connection with `payload` then closing it; None: never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    if payload is not None:

        def serve() -> None:
            while True:
                try:
                    conn, _ = sock.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    conn.sendall(payload)

        threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], sock


def warnings_of(caplog, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_an_entry_names_a_loopback_port_and_nothing_else(tmp_path):
    """A local user's entry cannot make the node's port serve a file or reach another host."""
    secret = tmp_path / "secret"
    secret.write_text("vllm:stolen 1\n")
    directory = tmp_path / "node"
    directory.mkdir(mode=0o700)
    entry(directory, "file", f'{{"url": "file://{secret}", "pid": {os.getpid()}}}')
    entry(directory, "text", f'{{"port": "80", "pid": {os.getpid()}}}')
    entry(directory, "range", f'{{"port": 70000, "pid": {os.getpid()}}}')
    entry(directory, "ok", f'{{"port": 5, "url": "http://10.0.0.1/", "pid": {os.getpid()}}}')
    assert listed_urls(directory) == ["http://127.0.0.1:5/metrics"]
    assert "stolen" not in node_exposition(directory)


def test_the_directory_is_made_private_and_one_others_can_write_is_not_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(engine_metrics.tempfile, "gettempdir", lambda: str(tmp_path))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    directory = engine_metrics.registry_dir("node-a", 1)
    replica = ReplicaEndpoint("r1", "tiny", directory, vllm_registry(1, 1))
    try:
        for path in (directory, directory.parent):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700
        assert len(listed_urls(directory)) == 1
        directory.chmod(0o777)  # as left by someone else: anyone may have written entries there
        assert listed_urls(directory) == []
        assert warnings_of(caplog, str(directory))
    finally:
        replica.stop()
    # a directory others may write gets no entry of ours either
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    other = ReplicaEndpoint("r2", "tiny", shared / "node-b-1", vllm_registry(1, 1))
    try:
        assert not (shared / "node-b-1").exists()
    finally:
        other.stop()


def test_an_entry_is_written_without_a_predictable_temporary_name(tmp_path):
    """A fixed `<replica>.tmp` could be a planted symlink: the entry would be written wherever it points."""
    directory = tmp_path / "node"
    directory.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    (directory / "r1.tmp").symlink_to(victim)
    replica = ReplicaEndpoint("r1", "tiny", directory, vllm_registry(1, 1))
    try:
        assert victim.read_text() == "untouched"
        assert len(listed_urls(directory)) == 1
        assert sorted(p.name for p in directory.iterdir()) == ["r1.json", "r1.tmp"]  # no temporary file left
    finally:
        replica.stop()


def test_a_replica_with_a_broken_answer_is_left_out_not_the_whole_scrape(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    directory = tmp_path / "node"
    directory.mkdir(mode=0o700)
    good = ReplicaEndpoint("good", "tiny", directory, vllm_registry(3, 1))
    bad_status, s1 = raw_server(b"garbage\r\n\r\n")  # http.client.BadStatusLine
    short, s2 = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nvllm:x 1\n")  # IncompleteRead
    not_utf8, s3 = raw_server(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n\xff\xfe\xfd\xfc")  # UnicodeDecodeError
    for name, port in (("bad", bad_status), ("short", short), ("latin", not_utf8)):
        listing(directory, name, port)
    try:
        got = samples(node_exposition(directory))
        assert {s.labels["replica"]: s.value for s in got["vllm:num_requests_waiting"]} == {"good": 3}
        for port in (bad_status, short, not_utf8):
            assert warnings_of(caplog, f"127.0.0.1:{port}/")
    finally:
        good.stop()
        for sock in (s1, s2, s3):
            sock.close()


def test_stuck_replicas_are_fetched_in_parallel_under_one_deadline(tmp_path, monkeypatch):
    deadline = getattr(engine_metrics, "FETCH_DEADLINE_S", 5.0)
    monkeypatch.setattr(engine_metrics, "FETCH_DEADLINE_S", 0.5, raising=False)
    monkeypatch.setattr(engine_metrics, "FETCH_TIMEOUT_S", 0.5, raising=False)
    directory = tmp_path / "node"
    directory.mkdir(mode=0o700)
    good = ReplicaEndpoint("good", "tiny", directory, vllm_registry(2, 1))
    stuck = [raw_server(None) for _ in range(3)]  # the connection is accepted (backlog), never answered
    for i, (port, _) in enumerate(stuck):
        listing(directory, f"stuck{i}", port)
    try:
        started = time.monotonic()
        got = samples(node_exposition(directory))
        elapsed = time.monotonic() - started
        assert {s.labels["replica"]: s.value for s in got["vllm:num_requests_waiting"]} == {"good": 2}
        assert elapsed < 1.2, elapsed  # one after another: 3 x 0.5 s at least
        assert deadline <= 3.0  # the real one: well inside Prometheus' 10 s scrape timeout
    finally:
        good.stop()
        for _, sock in stuck:
            sock.close()


def test_stopping_the_export_from_the_event_loop_does_not_block_it(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_metrics.tempfile, "gettempdir", lambda: str(tmp_path))
    (port,) = free_ports(1)
    holder = EngineMetricsExport("r1", "tiny", "node-a", "127.0.0.1", port, vllm_registry(1, 1))
    other = EngineMetricsExport("r2", "tiny", "node-a", "127.0.0.1", port, vllm_registry(1, 1))
    assert holder.node.serving
    stops: list = []

    async def main() -> float:
        worst = 0.0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal worst
            last = time.monotonic()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                worst = max(worst, now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        stops.append(holder.stop())  # as export_engine_stats does at drain, on the replica's loop
        stops.append(other.stop())
        await asyncio.sleep(0.2)
        done.set()
        await task
        return worst

    worst = asyncio.run(main())
    for thread in stops:
        if isinstance(thread, threading.Thread):
            thread.join(5)
    assert worst < 0.05, worst
    with socket.socket() as s:  # and it did stop
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_the_node_port_binds_an_ipv6_host(tmp_path):
    directory = tmp_path / "node"
    directory.mkdir(mode=0o700)
    replica = ReplicaEndpoint("r1", "tiny", directory, vllm_registry(6, 1))
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    node = NodeEndpoint("::1", port, directory)
    try:
        assert node.serving
        text = httpx.get(f"http://[::1]:{port}/metrics", timeout=5).text
        assert {s.labels["replica"]: s.value for s in samples(text)["vllm:num_requests_waiting"]} == {"r1": 6}
    finally:
        node.stop()
        replica.stop()


def test_a_bind_error_other_than_port_in_use_is_a_warning_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(engine_metrics, "LEADER_RETRY_S", 0.05)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    node = NodeEndpoint("192.0.2.1", free_ports(1)[0], tmp_path)  # TEST-NET: no address of this host
    try:
        time.sleep(0.4)  # several retries
        assert not node.serving
    finally:
        node.stop()
    assert len(warnings_of(caplog, "192.0.2.1")) == 1


def test_a_port_held_by_something_else_is_said_once_after_a_while(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(engine_metrics.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(engine_metrics, "LEADER_RETRY_S", 0.05)
    monkeypatch.setattr(engine_metrics, "FOREIGN_WARN_S", 0.2, raising=False)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    # held by a replica of this node: the others wait, quietly
    (port,) = free_ports(1)
    first = EngineMetricsExport("r1", "tiny", "node-a", "127.0.0.1", port, vllm_registry(1, 1))
    second = EngineMetricsExport("r2", "tiny", "node-a", "127.0.0.1", port, vllm_registry(1, 1))
    try:
        time.sleep(0.5)
        assert first.node.serving and not second.node.serving
        assert not warnings_of(caplog, engine_metrics.PORT_ENV)
    finally:
        stop_all(first, second)
    # held by something else (a second cluster on the host): said once
    foreign = socket.socket()
    foreign.bind(("127.0.0.1", 0))
    foreign.listen()
    port = foreign.getsockname()[1]
    export = EngineMetricsExport("r3", "tiny", "node-a", "127.0.0.1", port, vllm_registry(1, 1))
    try:
        time.sleep(0.6)
        assert not export.node.serving
        said = warnings_of(caplog, engine_metrics.PORT_ENV)
        assert len(said) == 1 and str(port) in said[0].getMessage()
    finally:
        stop_all(export)
        foreign.close()


def stop_all(*exports: EngineMetricsExport) -> None:
    """Stops and waits (stop() itself returns at once, see the event-loop test)."""
    for thread in [export.stop() for export in exports]:
        if isinstance(thread, threading.Thread):
            thread.join(5)
