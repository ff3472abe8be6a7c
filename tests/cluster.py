"""A multi-node Ray cluster on one machine: one network namespace per node, joined by a bridge.

Each node is what a pod is on Kubernetes: its own IP address and port space
(a network namespace with a veth pair into a bridge), its own process tree
(`ray start --block`, as KubeRay runs it, in a cgroup of its own) and its own
Ray temp dir. The head runs Ray's control plane with no CPUs, as the rendered
manifests do; workers get the CPUs and custom resources a test asks for, so a
config can pin replicas to nodes (`deployment.resources`).

    python -m tests.cluster up --nodes 3 [--deploy configs/multi-model.yaml]
    python -m tests.cluster down --stale      # what a crashed run left behind

In tests: `with Cluster([NodeSpec(), NodeSpec(cpus=2), ...]) as cluster:`,
then `cluster.deploy(config)`, `cluster.nodes[i].url(port)`, and the ways a
node ends: `kill()` (its whole process tree at once: a lost pod),
`terminate()` (SIGTERM to `ray start --block`: what the kubelet sends).

Traffic stays inside what the harness made: the bridge's own address on the
host and the nodes' addresses are the only targets; the namespaces get no
default route. Teardown is bounded in time and runs however a test ends:
every process of a node is found through its cgroup (also those a dead parent
left to init), killed, and waited for; then the namespaces, the bridge, the
cgroups and the temp dirs are removed. It refuses to start, with the reason,
where namespaces, bridges or cgroups cannot be made (not root, no cgroup2).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from loadtests.servers import SERVE, start_in_own_group

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFIX = "srvc"  # every namespace, link and cgroup the harness makes starts with it
CGROUP_ROOT = Path("/sys/fs/cgroup/unified")
CGROUP_PARENT = CGROUP_ROOT / "serving-cluster"
GCS_PORT = 6379
DASHBOARD_PORT = 8265


class ClusterUnavailable(RuntimeError):
    """This machine cannot make the namespaces, bridge or cgroups a cluster needs."""


@dataclass
class NodeSpec:
    """What one node offers Ray: logical CPUs, custom resources, extra environment for its processes."""

    cpus: float = 0
    resources: dict[str, float] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    object_store_mb: int = 200


def _run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def _cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _kill_cgroup(path: Path, timeout_s: float = 15) -> list[int]:
    """SIGKILL every process of the cgroup and wait until it is empty; the pids still there after `timeout_s`."""
    if not path.exists():
        return []
    with contextlib.suppress(OSError):
        (path / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + timeout_s
    while _cgroup_pids(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _cgroup_pids(path)


def check_machine() -> None:
    """Refuse early, with the reason, where a cluster cannot be made."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (network namespaces and bridges need CAP_NET_ADMIN)")
    if shutil.which("ip") is None:
        problems.append("no `ip` command (iproute2)")
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        problems.append(f"no cgroup2 hierarchy at {CGROUP_ROOT} (needed to find and kill a node's processes)")
    if not problems:
        try:
            CGROUP_PARENT.mkdir(exist_ok=True)
            if not (CGROUP_PARENT / "cgroup.kill").exists():
                problems.append("cgroup2 without cgroup.kill (Linux 5.14+): a node's processes could not be killed")
        except OSError as exc:
            problems.append(f"cannot make cgroups under {CGROUP_ROOT}: {exc}")
    if not problems:
        probe = f"{PREFIX}probe{secrets.token_hex(2)}"
        made = _run("ip", "netns", "add", probe, check=False)
        if made.returncode != 0:
            problems.append(f"`ip netns add` failed: {made.stderr.strip()}")
        else:
            _run("ip", "netns", "del", probe, check=False)
    if problems:
        raise ClusterUnavailable("cannot make a multi-node cluster here: " + "; ".join(problems))


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.200.0.0-10.249.255.0 that no address or route of the machine touches."""
    used = _run("ip", "-4", "-o", "addr").stdout + _run("ip", "-4", "route").stdout
    taken = []
    for word in used.split():
        with contextlib.suppress(ValueError):
            taken.append(ipaddress.ip_network(word, strict=False))
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return net
    raise ClusterUnavailable("no free 10.x.y.0/24 subnet for the cluster's bridge")


class Node:
    """One Ray node: a namespace, an address, a cgroup and a `ray start --block` process."""

    def __init__(self, cluster: Cluster, index: int, spec: NodeSpec):
        self.cluster, self.index, self.spec = cluster, index, spec
        self.netns = f"{cluster.name}-{index}"
        self.host_link = f"{cluster.name}v{index}"
        self.ip = str(cluster.subnet.network_address + 10 + index)
        self.cgroup = cluster.cgroup / f"n{index}"
        self.temp_dir = cluster.workdir / f"n{index}"  # short: Ray's socket paths must fit in 107 bytes
        self.log_path = cluster.workdir / f"node-{index}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.is_head = index == 0

    def __repr__(self) -> str:
        return f"Node({self.index}, {self.ip})"

    def url(self, port: int, path: str = "") -> str:
        return f"http://{self.ip}:{port}{path}"

    def create_network(self) -> None:
        peer = f"{self.cluster.name}p{self.index}"
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", peer, "netns", self.netns)
        _run("ip", "link", "set", self.host_link, "master", self.cluster.bridge)
        _run("ip", "link", "set", self.host_link, "up")
        inside = ("ip", "netns", "exec", self.netns)
        _run(*inside, "ip", "link", "set", peer, "name", "eth0")
        _run(*inside, "ip", "addr", "add", f"{self.ip}/{self.cluster.subnet.prefixlen}", "dev", "eth0")
        _run(*inside, "ip", "link", "set", "eth0", "up")
        _run(*inside, "ip", "link", "set", "lo", "up")

    def ray_command(self) -> list[str]:
        spec = self.spec
        cmd = [
            str(BIN / "ray"),
            "start",
            "--block",
            "--node-ip-address",
            self.ip,
            "--num-cpus",
            f"{spec.cpus:g}",
            "--object-store-memory",
            str(spec.object_store_mb * 2**20),
            "--temp-dir",
            str(self.temp_dir),
            "--disable-usage-stats",
        ]
        if spec.resources:
            cmd += ["--resources", json.dumps(spec.resources)]
        if self.is_head:
            cmd += ["--head", "--port", str(GCS_PORT), "--dashboard-host", self.ip]
            cmd += ["--dashboard-port", str(DASHBOARD_PORT)]
        else:
            cmd += ["--address", f"{self.cluster.head.ip}:{GCS_PORT}"]
        return cmd

    def start(self) -> None:
        """Start `ray start --block` inside the namespace, as the first process of the node's cgroup."""
        self.cgroup.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        procs_file = str(self.cgroup / "cgroup.procs")

        def enter() -> None:
            # In the child before exec: what every server of the tests gets (its own process
            # group in the caller's session), and the node's cgroup, which every descendant inherits.
            start_in_own_group()
            with open(procs_file, "w") as f:
                f.write(str(os.getpid()))

        env = {**os.environ, **self.cluster.ray_env(), **self.spec.env}
        env.pop("RAY_ADDRESS", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *self.ray_command()],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=enter,
        )

    def pids(self) -> list[int]:
        """Every live process of this node (its cgroup's), whoever its parent is now."""
        return _cgroup_pids(self.cgroup)

    def processes(self, *names: str) -> list[psutil.Process]:
        """The node's processes whose name or command line contains one of `names` (all of them if none)."""
        found = []
        for pid in self.pids():
            try:
                p = psutil.Process(pid)
                text = p.name() + " " + " ".join(p.cmdline())
            except psutil.Error:
                continue
            if not names or any(n in text for n in names):
                found.append(p)
        return found

    def kill(self) -> float:
        """Every process of the node at once (raylet, workers, engines): a lost pod. Returns when they are gone."""
        t0 = time.monotonic()
        left = _kill_cgroup(self.cgroup)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        if left:
            raise RuntimeError(f"{self}: processes survived SIGKILL: {left}")
        return time.monotonic() - t0

    def terminate(self) -> None:
        """SIGTERM to the node's `ray start --block`, as the kubelet sends it when a pod is deleted."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout_s: float) -> bool:
        """Whether every process of the node ended within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        return not self.pids()

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def remove(self) -> list[int]:
        """Kill what is left of the node and remove its namespace and cgroup; the pids that would not die."""
        left = _kill_cgroup(self.cgroup)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            self._log.close()
        _run("ip", "link", "del", self.host_link, check=False)
        _run("ip", "netns", "del", self.netns, check=False)
        if not left:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()
        return left


class Cluster:
    """N nodes on a bridge: node 0 is the head (GCS, dashboard, Serve's controller)."""

    def __init__(self, specs: list[NodeSpec], workdir: Path | None = None):
        if not specs:
            raise ValueError("a cluster needs at least the head node")
        self.specs = specs
        self.name = f"{PREFIX}{secrets.token_hex(2)}"
        self.bridge = f"{self.name}br"
        self.cgroup = CGROUP_PARENT / self.name
        self._own_workdir = workdir is None
        # Short, under /tmp: Ray puts unix sockets in the temp dir. Made by up(), once the machine passed.
        self.workdir = Path(workdir) if workdir else Path("/tmp") / f"{self.name}-{secrets.token_hex(3)}"
        self.subnet: ipaddress.IPv4Network = ipaddress.ip_network("10.200.0.0/24")
        self.nodes: list[Node] = []
        self._up = False
        # Ray's token authentication, on as a production cluster has it, with a token of this
        # cluster's own (not ~/.ray/auth_token, which a local `serve run` creates and Ray
        # 2.60 then applies to every cluster the user starts).
        self.token = secrets.token_hex(32)

    def ray_env(self) -> dict[str, str]:
        """The environment that reaches this cluster: its token, no usage stats, no other cluster's address."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0"}

    @property
    def auth(self) -> dict[str, str]:
        """Headers for the head's dashboard (its REST API checks the cluster's token)."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def workers(self) -> list[Node]:
        return self.nodes[1:]

    @property
    def dashboard(self) -> str:
        return self.head.url(DASHBOARD_PORT)

    @property
    def gcs_address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, timeout_s: float = 120) -> Cluster:
        """Make the network, start the head, then the workers; ready when every node is alive in Ray."""
        check_machine()
        self._up = True
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "owner").write_text(str(os.getpid()))  # `down --stale` spares a live owner's cluster
            self.subnet = _free_subnet()
            host_ip = self.subnet.network_address + 1
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{host_ip}/{self.subnet.prefixlen}", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            self.nodes = [Node(self, i, spec) for i, spec in enumerate(self.specs)]
            for node in self.nodes:
                node.create_network()
            self.head.start()
            self._wait(
                lambda: self._get(f"{self.dashboard}/api/version") is not None, timeout_s, "the head's dashboard"
            )
            for node in self.workers:
                node.start()
            self.wait_nodes_alive(len(self.nodes), timeout_s)
        except BaseException:
            self.down()
            raise
        return self

    def restart_node(self, node: Node, timeout_s: float = 120) -> None:
        """Start a stopped node again on the same address (the head: on the same GCS port)."""
        if node.pids():
            raise RuntimeError(f"{node} still runs: {node.pids()}")
        if node.proc is not None:
            node._log.close()
        # A restarted pod has a fresh /tmp. Here the last run's address file would make
        # `ray start --head` take the workers' raylets (they name the head's GCS address on
        # their command lines, and Ray scans the machine's processes) for a running head.
        (node.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        node.start()
        if node.is_head:
            ready = lambda: self._get(f"{self.dashboard}/api/version") is not None  # noqa: E731
        else:
            ready = lambda: node.ip in {n.get("node_ip") for n in self.alive_nodes()}  # noqa: E731
        self._wait(ready, timeout_s, f"{node} up again", watch=[node])

    def alive_nodes(self) -> list[dict[str, Any]]:
        """Ray's view (the state API): the nodes it holds ALIVE."""
        data = self._get(f"{self.dashboard}/api/v0/nodes?limit=100&detail=true")
        if data is None:
            return []
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return [r for r in rows if r.get("state") == "ALIVE"]

    def wait_nodes_alive(self, n: int, timeout_s: float = 120) -> None:
        self._wait(lambda: len(self.alive_nodes()) == n, timeout_s, f"{n} alive nodes")

    def deploy(self, config: dict[str, Any], timeout_s: float = 300, ready: list[str] | None = None) -> None:
        """`serve deploy` of a config (as data) through the head's dashboard; then wait for the `ready` URLs' 200."""
        path = self.workdir / f"deploy-{secrets.token_hex(3)}.yaml"
        path.write_text(yaml.safe_dump(config))
        done = subprocess.run(
            [SERVE, "deploy", "--address", self.dashboard, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **self.ray_env()},
        )
        if done.returncode != 0:
            raise RuntimeError(f"serve deploy failed: {done.stdout}\n{done.stderr}")
        for url in ready or []:
            self._wait(lambda u=url: self._status(u) == 200, timeout_s, f"{url} answering 200", logs=True)

    def serve_status(self) -> dict[str, Any]:
        return self._get(f"{self.dashboard}/api/serve/applications/") or {}

    def down(self) -> None:
        """Kill every node's processes (workers first), remove namespaces, bridge, cgroups, temp dirs; bounded."""
        if not self._up:
            return
        # A second Ctrl-C (or the CLI's SIGTERM) must not cut the teardown short.
        in_main = threading.current_thread() is threading.main_thread()
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
        try:
            self._remove()
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)

    def _remove(self) -> None:
        survivors: dict[str, list[int]] = {}
        for node in reversed(self.nodes):
            try:
                left = node.remove()
            except (OSError, subprocess.SubprocessError) as exc:  # go on with the other nodes
                left = [f"{exc!r}"]  # type: ignore[list-item]
            if left:
                survivors[node.netns] = left
        self._up = False
        _run("ip", "link", "del", self.bridge, check=False)
        with contextlib.suppress(OSError):
            self.cgroup.rmdir()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if survivors:
            raise RuntimeError(f"cluster {self.name}: processes survived SIGKILL: {survivors}")

    def leftovers(self) -> list[str]:
        """What of this cluster is still on the machine (processes, namespaces, links): empty after `down()`."""
        found = [f"pid {p}" for node in self.nodes for p in node.pids()]
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if str(self.workdir) in " ".join(p.cmdline()):
                    found.append(f"pid {p.pid} {p.name()}")
        netns = _run("ip", "netns", "list", check=False).stdout
        found += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(self.name)]
        links = _run("ip", "-o", "link", check=False).stdout
        found += [f"link {self.name}" for line in links.splitlines() if f" {self.name}" in line][:1]
        return found

    def logs(self) -> str:
        return "\n".join(f"--- node {n.index} ({n.ip}) ---\n{n.tail()}" for n in self.nodes)

    def _get(self, url: str) -> Any:
        try:
            r = httpx.get(url, timeout=5, headers=self.auth)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    @staticmethod
    def _status(url: str) -> int | None:
        try:
            return httpx.get(url, timeout=5).status_code
        except httpx.HTTPError:
            return None

    def _wait(self, ok: Any, timeout_s: float, what: str, logs: bool = False, watch: list[Node] | None = None) -> None:
        """Poll `ok()` until `timeout_s`; a node of `watch` (default: all) whose processes all ended fails it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ok():
                return
            for node in self.nodes if watch is None else watch:
                if node.proc is not None and node.proc.poll() is not None and not node.pids():
                    raise RuntimeError(f"{node} exited with {node.proc.returncode} waiting for {what}\n{self.logs()}")
            time.sleep(0.5)
        raise TimeoutError(f"no {what} after {timeout_s:g} s\n{self.logs() if logs else ''}")


def _live_clusters() -> set[str]:
    """Names of the clusters whose owner (the process that made them) still runs."""
    live = set()
    for owner in Path("/tmp").glob(f"{PREFIX}*-*/owner"):
        with contextlib.suppress(OSError, ValueError):
            if psutil.pid_exists(int(owner.read_text())):
                live.add(owner.parent.name.split("-")[0])
    return live


def remove_stale() -> list[str]:
    """Remove what earlier clusters left (a killed test run): processes, namespaces, links, cgroups, dirs.

    A cluster whose owner still runs (another test run's) is left alone.
    """
    live = _live_clusters()

    def stale(name: str) -> bool:
        return name.startswith(PREFIX) and not any(name.startswith(c) for c in live)

    removed = []
    if CGROUP_PARENT.exists():
        for cluster_dir in [d for d in CGROUP_PARENT.iterdir() if d.is_dir() and stale(d.name)]:
            for node_dir in [d for d in cluster_dir.iterdir() if d.is_dir()]:
                _kill_cgroup(node_dir)
                with contextlib.suppress(OSError):
                    node_dir.rmdir()
            with contextlib.suppress(OSError):
                cluster_dir.rmdir()
                removed.append(f"cgroup {cluster_dir.name}")
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if stale(name):
            _run("ip", "netns", "del", name, check=False)
            removed.append(f"netns {name}")
    for line in _run("ip", "-o", "link", check=False).stdout.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if stale(name):
            _run("ip", "link", "del", name, check=False)
            removed.append(f"link {name}")
    for d in Path("/tmp").glob(f"{PREFIX}*-*"):
        if stale(d.name):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"dir {d}")
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it until Ctrl-C (then tear it down)")
    up.add_argument("--nodes", type=int, default=3, help="nodes including the head (default 3)")
    up.add_argument("--cpus", type=float, default=2, help="logical CPUs of each worker (the head has 0)")
    up.add_argument("--deploy", type=Path, help="a config to `serve deploy` once the nodes are up")
    down = sub.add_parser("down", help="remove what crashed runs left behind")
    down.add_argument("--stale", action="store_true", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "down":
        for line in remove_stale() or ["nothing to remove"]:
            print(line)
        return 0
    specs = [NodeSpec()] + [NodeSpec(cpus=args.cpus, resources={f"node{i}": 1}) for i in range(1, args.nodes)]
    cluster = Cluster(specs)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and SIGTERM tear down, even while the nodes start (and from a shell that ignores SIGINT).
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        run(cluster, args.deploy)
    except KeyboardInterrupt:
        pass
    print("cluster removed")
    return 0


def run(cluster: Cluster, deploy: Path | None) -> None:
    with cluster:
        for node in cluster.nodes:
            role = "head" if node.is_head else f"worker, resource node{node.index}"
            print(f"node {node.index} ({role}): {node.ip}  netns {node.netns}  log {node.log_path}")
        print(f"dashboard {cluster.dashboard}   RAY_ADDRESS={cluster.gcs_address}")
        print(f"Ray token: RAY_AUTH_MODE=token RAY_AUTH_TOKEN={cluster.token}")
        if deploy:
            cluster.deploy(yaml.safe_load(deploy.read_text()))
            print(f"deployed {deploy}; status: serve status --address {cluster.dashboard} (with the token)")
        print("Ctrl-C tears the cluster down", flush=True)
        while True:
            time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
