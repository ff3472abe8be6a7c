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
  holder stops another replica serves it within that time. A port held by something
  that is not one of the node's replicas (a second cluster on the host) is logged once,
  after `FOREIGN_WARN_S`.

The directory is trusted only when private (ours, mode 0700, writable by nobody else), and
an entry holds a port number only: the node's port fetches `http://127.0.0.1:<port>/metrics`,
built here, never a URL read from a file, so a local user cannot make it serve a file or
reach elsewhere. The replicas are fetched in parallel under one deadline (`FETCH_DEADLINE_S`),
well inside Prometheus' 10 s scrape timeout; one that fails or is late is left out of that
scrape, not the node's whole answer.

Reading vLLM's registry walks all of its histograms (~10 ms on the replica, measured in
`serving/engine/vllm_engine.py`'s `stats`); at one scrape every 10-15 s that is under 0.1%
of a core. docs/observability.md, "vLLM's own metrics", says how to scrape it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import tempfile
import threading
import time
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
FETCH_DEADLINE_S = 3.0  # all replicas of a scrape, together (Prometheus' scrape timeout: 10 s)
FOREIGN_WARN_S = 60.0  # the node's port held this long by something not ours: say so, once
WARN_EVERY_S = 60.0  # one warning per replica endpoint (or directory) in this time, debug otherwise
HOLDER = "holder"  # the pid of the replica holding the node's port (no .json: not an entry)


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
        self.port = int(self._server.server_port)
        self._entry: Path | None = None
        if private_dir(directory, create=True):
            self._entry = directory / f"{_safe(replica)}.json"
            entry = {"port": self.port, "pid": os.getpid(), "replica": replica, "model": model}
            _write_atomically(self._entry, json.dumps(entry))

    def stop(self) -> None:
        if self._entry is not None:
            with contextlib.suppress(OSError):
                self._entry.unlink()
        self._server.shutdown()
        self._server.server_close()


def private_dir(directory: Path, create: bool = False) -> bool:
    """Whether `directory` and its parent (ours, under the shared temp dir) are safe to use.

    Safe: real directories (not symlinks), owned by this uid, writable by nobody else. With
    `create`, missing ones are made with mode 0700. Otherwise a warning (rate-limited) and False.
    """
    for path in (directory.parent, directory):
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o700)
        try:
            st = os.lstat(path)
        except OSError:
            if create:
                _warn(f"dir:{path}", "engine metrics: cannot create %s", path)
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            _warn(
                f"dir:{path}",
                "engine metrics: %s is not a directory of uid %d writable only by it; not used",
                path,
                os.getuid(),
            )
            return False
    return True


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replica_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def listed_urls(directory: Path) -> list[str]:
    """The endpoints of the node's live replicas; entries of processes that are gone are removed.

    An entry names a loopback port (an int in 1-65535), nothing else; the URL is built here.
    """
    if not private_dir(directory):
        return []
    urls = []
    for entry in sorted(directory.glob("*.json")):
        try:
            data = json.loads(entry.read_text())
            pid = int(data["pid"])
            port = data["port"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if type(port) is not int or not 0 < port < 65536:
            _warn(f"entry:{entry}", "engine metrics: %s does not name a port; ignored", entry)
            continue
        if not _alive(pid):
            with contextlib.suppress(OSError):
                entry.unlink()
            continue
        urls.append(replica_url(port))
    return urls


def fetch_all(urls: list[str], deadline_s: float | None = None) -> list[str]:
    """The texts of `urls`, fetched in parallel; those failing or not done within `deadline_s` are left out."""
    deadline_s = FETCH_DEADLINE_S if deadline_s is None else deadline_s
    results: list[str | None] = [None] * len(urls)

    def fetch(i: int, url: str) -> None:
        try:
            with urllib.request.urlopen(url, timeout=deadline_s) as response:
                results[i] = response.read().decode()
        except Exception:  # one replica (stuck, restarting, a bad answer) must not fail the node's scrape
            _warn(f"url:{url}", "engine metrics: %s did not answer; left out", url, exc_info=True)

    threads = [
        threading.Thread(target=fetch, args=(i, u), name="engine-metrics-fetch", daemon=True)
        for i, u in enumerate(urls)
    ]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline_s
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    late = [u for u, t in zip(urls, threads, strict=True) if t.is_alive()]
    for url in late:
        _warn(f"url:{url}", "engine metrics: %s did not answer within %.1f s; left out", url, deadline_s)
    return [text for text, t in zip(results, threads, strict=True) if text is not None and not t.is_alive()]


def node_exposition(directory: Path) -> str:
    """What the node's port answers: the merged families of every replica listed in `directory`."""
    return merge_expositions(fetch_all(listed_urls(directory)))


class NodeEndpoint:
    """Takes the node's port when it is free and serves every replica's families there."""

    def __init__(self, host: str, port: int, directory: Path) -> None:
        self.host, self.port, self.directory = host, port, directory
        self._stop = threading.Event()
        self._server: Any = None
        self._error_logged = False
        self._foreign_since: float | None = None
        self._foreign_logged = False
        if not self._take():  # another replica of the node holds it: try again now and then
            threading.Thread(target=self._hold, name="engine-metrics-node", daemon=True).start()

    @property
    def serving(self) -> bool:
        return self._server is not None

    def _take(self) -> bool:
        try:
            self._server = _serve_text(self.host, self.port, lambda: node_exposition(self.directory))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                self._check_holder()
            elif not self._error_logged:
                self._error_logged = True
                logger.warning(
                    "engine metrics: cannot serve the node's vLLM metrics on %s:%d (%s); retrying every %.0f s",
                    self.host,
                    self.port,
                    e,
                    LEADER_RETRY_S,
                )
            return False
        if private_dir(self.directory):
            with contextlib.suppress(OSError):
                _write_atomically(self.directory / HOLDER, str(os.getpid()))
        logger.info("engine metrics: serving the node's vLLM metrics on %s:%d", self.host, self.port)
        return True

    def _check_holder(self) -> None:
        """The port is in use: by one of the node's replicas, or (said once, after a while) by something else."""
        if _holder_alive(self.directory):
            self._foreign_since = None
            return
        now = time.monotonic()
        if self._foreign_since is None:
            self._foreign_since = now
        elif now - self._foreign_since >= FOREIGN_WARN_S and not self._foreign_logged:
            self._foreign_logged = True
            logger.warning(
                "engine metrics: port %d on %s has been held for %.0f s by a process that is not one of this "
                "node's replicas (another cluster on this host?); vLLM's metrics are not served from this node. "
                "Set %s in the replicas' environment to another port",
                self.port,
                self.host,
                now - self._foreign_since,
                PORT_ENV,
            )

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
            holder = self.directory / HOLDER
            with contextlib.suppress(OSError, ValueError):
                if int(holder.read_text()) == os.getpid():
                    holder.unlink()
            server.shutdown()
            server.server_close()


def _holder_alive(directory: Path) -> bool:
    try:
        return private_dir(directory) and _alive(int((directory / HOLDER).read_text()))
    except (OSError, ValueError):
        return False


def _serve_text(host: str, port: int, text: Any) -> Any:
    """A threaded HTTP server answering GET /metrics with `text()` (prometheus_client's server, our WSGI app).

    The address family follows `host` (IPv6 for "::"), as prometheus_client's own servers do.
    """
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import CONTENT_TYPE_LATEST, ThreadingWSGIServer, _get_best_family, _SilentHandler

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        body = text().encode()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    class Server(ThreadingWSGIServer):
        pass

    Server.address_family, addr = _get_best_family(host, port)
    server = make_server(addr, port, app, Server, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="engine-metrics-http", daemon=True).start()
    return server


class EngineMetricsExport:
    """A replica's part: its own endpoint, and the node's port when it gets it."""

    def __init__(self, replica: str, model: str, node_id: str, host: str, port: int, source: Any = REGISTRY) -> None:
        directory = registry_dir(node_id, port)
        self.replica = ReplicaEndpoint(replica, model, directory, source)
        self.node = NodeEndpoint(host, port, directory)

    def stop(self) -> threading.Thread:
        """Stops both endpoints on a thread of its own and returns it (join it to wait).

        Called from the replica's event loop at drain: each server's shutdown waits for its
        serve loop's next poll (up to 0.5 s), which must not hold the loop.
        """
        thread = threading.Thread(target=self._stop_now, name="engine-metrics-stop", daemon=True)
        thread.start()
        return thread

    def _stop_now(self) -> None:
        try:
            self.node.stop()
        finally:
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


_warned: dict[str, float] = {}
_warned_lock = threading.Lock()


def _warn(key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
    """A warning at most once per `WARN_EVERY_S` for `key` (a replica, a directory), debug in between."""
    now = time.monotonic()
    with _warned_lock:
        last = _warned.get(key)
        loud = last is None or now - last >= WARN_EVERY_S
        if loud:
            _warned[key] = now
    logger.log(logging.WARNING if loud else logging.DEBUG, msg, *args, exc_info=exc_info)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "replica"
