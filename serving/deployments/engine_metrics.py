"""vLLM's own metrics (`vllm:*`), exported from every replica under their exact names, labelled by replica and model.

vLLM records its metrics (scheduler gauges, KV cache, prefix-cache counters, per-token
inter-token latency, TTFT, TPOT, ... histograms) into prometheus_client's registry of the
process that runs its engine client: our LLM replica. Ray's metrics API cannot carry them
as they are: Ray prefixes every custom metric with `ray_` and OpenTelemetry refuses `:` in
a name, so vLLM's own Ray logger (`RayPrometheusStatLogger`, what Ray Serve LLM uses) exports
`ray_vllm_num_requests_waiting`, which KEDA triggers on `vllm:num_requests_waiting`,
production-stack's dashboards and the Gateway API inference extension do not read; and it
records every token's latency through Ray's API, a cost per token in the replica.

So the registry is served as it is, in Prometheus' text format:

- each replica serves its `vllm:` families, with `replica` and `model` labels added, on a
  loopback port of its own (`ReplicaEndpoint`: a thread; the registry is read per scrape,
  nothing is added per request or per token), and lists that port in a directory of its
  node (`registry_dir`);
- one replica per node holds the node's engine-metrics port (`SERVING_ENGINE_METRICS_PORT`,
  8082 by default; 0 turns it off) and answers a scrape with the families of every replica
  listed there (`NodeEndpoint`), so one target per node (per pod) is scraped, as Ray's own
  metrics port is. The others try to take the port every `LEADER_RETRY_S`, so when its
  holder stops another replica serves it within that time.

Reading vLLM's registry walks all of its histograms (~10 ms on the replica, measured in
`serving/engine/vllm_engine.py`'s `stats`); at one scrape every 10-15 s that is under 0.1%
of a core. docs/observability.md, "vLLM's own metrics", says how to scrape it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PORT_ENV = "SERVING_ENGINE_METRICS_PORT"
DEFAULT_PORT = 8082
PREFIX = "vllm:"
LEADER_RETRY_S = 5.0
FETCH_TIMEOUT_S = 5.0


def node_port() -> int:
    """The node's engine-metrics port from the environment (0: not served)."""
    value = os.environ.get(PORT_ENV, "").strip()
    return int(value) if value else DEFAULT_PORT


def registry_dir(node_id: str, port: int) -> Path:
    """Where the replicas of one node (and one node port) list their endpoints.

    Keyed by the node: nodes sharing a file system (the test harness's network namespaces)
    must not fetch each other's loopback ports.
    """
    return Path(tempfile.gettempdir()) / "serving-engine-metrics" / f"{node_id}-{port}"


class LabelledFamilies(Collector):
    """The `vllm:` families of `source`, every sample with `replica` and `model` labels added."""

    def __init__(self, replica: str, model: str, source: Any = REGISTRY, prefix: str = PREFIX) -> None:
        self._labels = {"replica": replica, "model": model}
        self._source = source
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if not family.name.startswith(self._prefix):
                continue
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**s.labels, **self._labels}) for s in family.samples]
            yield out


def merge_expositions(texts: Iterable[str]) -> str:
    """Prometheus text expositions as one: each family's HELP/TYPE once, then every text's samples of it.

    prometheus_client writes a family's samples right after its HELP and TYPE lines, so a
    sample belongs to the family of the last header above it.
    """
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for text in texts:
        family = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    seen = headers.setdefault(family, [])
                    if not any(h.split(None, 2)[1] == parts[1] for h in seen):
                        seen.append(line)
                    samples.setdefault(family, [])
                continue
            if family is None:
                family = line.split("{", 1)[0].split(" ", 1)[0]
                headers.setdefault(family, [])
            samples.setdefault(family, []).append(line)
    out = []
    for family, lines in headers.items():
        out.extend(lines)
        out.extend(samples.get(family, []))
    return "\n".join(out) + ("\n" if out else "")


class ReplicaEndpoint:
    """One replica's `vllm:` families on a loopback port, listed in its node's registry directory."""

    def __init__(self, replica: str, model: str, directory: Path, source: Any = REGISTRY) -> None:
        self.replica = replica
        self.directory = directory
        registry = CollectorRegistry(auto_describe=False)
        registry.register(LabelledFamilies(replica, model, source))
        self._server, _thread = start_http_server(0, "127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{self._server.server_port}/metrics"
        directory.mkdir(parents=True, exist_ok=True)
        self._entry = directory / f"{_safe(replica)}.json"
        tmp = self._entry.with_suffix(".tmp")
        tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid(), "replica": replica, "model": model}))
        tmp.replace(self._entry)

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._entry.unlink()
        self._server.shutdown()
        self._server.server_close()


def listed_urls(directory: Path) -> list[str]:
    """The endpoints of the node's live replicas; entries of processes that are gone are removed."""
    urls = []
    for entry in sorted(directory.glob("*.json")):
        try:
            data = json.loads(entry.read_text())
            pid = int(data["pid"])
            url = str(data["url"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        urls.append(url)
    return urls


def node_exposition(directory: Path) -> str:
    """What the node's port answers: the merged families of every replica listed in `directory`."""
    texts = []
    for url in listed_urls(directory):
        try:
            with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
                texts.append(response.read().decode())
        except OSError:
            logger.debug("engine metrics: %s did not answer", url, exc_info=True)
    return merge_expositions(texts)


class NodeEndpoint:
    """Takes the node's port when it is free and serves every replica's families there."""

    def __init__(self, host: str, port: int, directory: Path) -> None:
        self.host, self.port, self.directory = host, port, directory
        self._stop = threading.Event()
        self._server: Any = None
        if not self._take():  # another replica of the node holds it: try again now and then
            threading.Thread(target=self._hold, name="engine-metrics-node", daemon=True).start()

    @property
    def serving(self) -> bool:
        return self._server is not None

    def _take(self) -> bool:
        try:
            self._server = _serve_text(self.host, self.port, lambda: node_exposition(self.directory))
        except OSError:
            return False
        logger.info("engine metrics: serving the node's vLLM metrics on %s:%d", self.host, self.port)
        return True

    def _hold(self) -> None:
        while not self._stop.wait(LEADER_RETRY_S):
            if self._take():
                if self._stop.is_set():  # stopped while it bound
                    self.stop()
                return

    def stop(self) -> None:
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


def _serve_text(host: str, port: int, text: Any) -> Any:
    """A threaded HTTP server answering GET /metrics with `text()` (prometheus_client's server, our WSGI app)."""
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer, _SilentHandler

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        body = text().encode()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="engine-metrics-http", daemon=True).start()
    return server


class EngineMetricsExport:
    """A replica's part: its own endpoint, and the node's port when it gets it."""

    def __init__(self, replica: str, model: str, node_id: str, host: str, port: int, source: Any = REGISTRY) -> None:
        directory = registry_dir(node_id, port)
        self.replica = ReplicaEndpoint(replica, model, directory, source)
        self.node = NodeEndpoint(host, port, directory)

    def stop(self) -> None:
        self.node.stop()
        self.replica.stop()


def has_families(source: Any = REGISTRY, prefix: str = PREFIX) -> bool:
    """Whether this process records any `vllm:` metric (an engine of vLLM runs here)."""
    names = getattr(source, "_names_to_collectors", None)
    if names is not None:
        return any(str(n).startswith(prefix) for n in names)
    return any(m.name.startswith(prefix) for m in source.collect())


def own_exposition(replica: str, model: str, source: Any = REGISTRY) -> str:
    """One replica's labelled families as text (what its endpoint answers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LabelledFamilies(replica, model, source))
    return generate_latest(registry).decode()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "replica"
