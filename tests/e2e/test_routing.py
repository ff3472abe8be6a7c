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
measured here is placement, not generation. Replicas are added and stopped
beside the running ones with Serve's per-deployment override (`deployments:`
in the app's config): a change under `args` is a new code version, and Serve
replaces every replica for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

from loadtests.servers import free_ports
from serving.api.forwarded import REPLICA_HEADER
from serving.routing.scheduler import REFRESH_S
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


def wait_until_routed(server: Any, n: int, tmp_path: Path, timeout_s: float = 120) -> None:
    """Until the app's registry lists n replicas ready, then two refreshes: every entry point's table lists them.

    Each replica learns the others from the app's registry actor, whose start (a new Ray
    worker) took more than its 2 s call timeout in a CI run under load; until then every
    replica serves what it receives itself.
    """
    watch = RegistryWatch(server.gcs_address(), tmp_path / "routed-watch.log", timeout_s=timeout_s)
    try:
        deadline = time.monotonic() + timeout_s
        while len(watch.in_state("ready")) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(watch.in_state("ready")) >= n, f"the registry lists {watch.in_state('ready')}: {watch.why()}"
    finally:
        watch.close()
    time.sleep(2 * REFRESH_S + 0.1)


def placed_once(prompts: list[str]) -> dict[str, str]:
    """Each prompt sent once over a fresh connection: where it was served (it is held there from now on)."""
    where = {}
    for prompt in prompts:
        with OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", max_retries=0) as fresh:
            where[prompt] = served_by(fresh, prompt)
    time.sleep(2 * REFRESH_S + 0.1)  # reported, and every entry point's table refreshed
    return where


def test_one_pooled_client_is_spread_over_every_replica_whatever_its_connections(tmp_path):
    with start_stack(config(4), tmp_path / "serve.log") as server:
        assert len(wait_for_replicas(4)) == 4, "the replicas never all answered"
        wait_until_routed(server, 4, tmp_path)
        client = OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", max_retries=0, timeout=30)

        def one(i: int) -> tuple[str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"question {i} about something"}], max_tokens=4
            )
            return raw.headers["x-serving-entry"], raw.headers[REPLICA_HEADER]

        with ThreadPoolExecutor(4) as pool:
            placed = list(pool.map(one, range(400)))
        entries = Counter(e for e, _ in placed)
        counts = Counter(r for _, r in placed)
        forwarded = sum(e != r for e, r in placed)
        print(
            f"\none pooled client, 4 threads, 400 distinct prompts, 4 replicas: served {sorted(counts.values())},"
            f" entered at {sorted(entries.values())}, {forwarded} forwarded"
        )
        # The pool's connections landed on whichever replicas the kernel chose (often fewer than 4);
        # the requests are spread over all of them anyway.
        assert len(counts) == 4, counts
        assert max(counts.values()) <= 1.5 * 100, counts
        if len(entries) < 4:  # connections on every replica need no forward (a CI run had one on each: 0 forwarded)
            assert forwarded > 0, entries

        # One prompt, from fresh connections (wherever the kernel lands them): served where it is held,
        # then, once an entry point has placed it twice and reported it (a shared prefix), at its home,
        # the same one from every entry point.
        prompt = "You are a support agent for ACME. " * 20
        where = set(placed_once([prompt]).values())
        for _ in range(8):
            with OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", max_retries=0) as fresh:
                where.add(served_by(fresh, prompt))
        time.sleep(0.6)  # reported within a refresh (250 ms)
        settled = set()
        for _ in range(8):
            with OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", max_retries=0) as fresh:
                settled.add(served_by(fresh, prompt))
        assert len(settled) == 1 and len(where | settled) <= 2, (where, settled)  # at most one move


def test_a_client_whose_connections_all_entered_at_one_replica_is_spread_over_every_replica(tmp_path):
    """Four connections on one replica, 400 requests from 4 threads: its entry point keeps about its share.

    An entry point rated its own replica by its live count alone and every other by the larger
    of its reported mean and what it had in flight there: its own looked less loaded, and with
    all of a client's connections on it, it served 148/171/176 of 400 (1.48-1.76x its share;
    the CI failure of 575576e had 1.71x). Rated alike (940aa8e): 114-116 (1.14-1.16x).
    """
    with start_stack(config(4), tmp_path / "serve.log") as server:
        assert len(wait_for_replicas(4)) == 4, "the replicas never all answered"
        wait_until_routed(server, 4, tmp_path)
        # One connection per httpx client, kept open (no client-side expiry; the server keeps an
        # idle one 30 s): new ones until the kernel has put four on one replica (13 at most).
        one = httpx.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=None)

        def post(http: httpx.Client, prompt: str) -> tuple[str, str]:
            body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.headers["x-serving-entry"], r.headers[REPLICA_HEADER]

        by_entry: dict[str, list[httpx.Client]] = {}
        with contextlib.ExitStack() as opened:
            for i in range(13):
                http = opened.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{DIRECT}", limits=one, timeout=30))
                entry, _ = post(http, f"connection {i}")
                by_entry.setdefault(entry, []).append(http)
                if len(by_entry[entry]) == 4:
                    break
            conns = by_entry[entry]
            assert len(conns) == 4, {e: len(cs) for e, cs in by_entry.items()}

            def worker(k: int) -> list[tuple[str, str]]:
                return [post(conns[k], f"question {k * 100 + j} about something") for j in range(100)]

            with ThreadPoolExecutor(4) as pool:
                placed = [p for got in pool.map(worker, range(4)) for p in got]
        entries = Counter(e for e, _ in placed)
        counts = Counter(r for _, r in placed)
        print(
            f"\nfour connections on one replica, 4 threads, 400 distinct prompts, 4 replicas:"
            f" entered at {dict(entries)}, served {sorted(counts.values())}, the entry replica"
            f" {counts[entry]} ({counts[entry] / 100:.2f}x its share)"
        )
        assert entries == {entry: 400}, entries  # the connections stayed where they were opened
        assert len(counts) == 4, counts
        # 1.35x its share: above the 1.14-1.16x measured rated alike, below the 1.48-1.76x measured
        # when it rated itself by its live count alone (each with a margin of 13 requests or more).
        assert counts[entry] <= 1.35 * 100, counts


def test_a_stream_forwarded_to_another_replica_streams(tmp_path):
    """Each chunk arrives as the serving replica writes it: the first within the TTFT, not with the last."""
    with start_stack(config(2), tmp_path / "serve.log") as server:
        assert len(wait_for_replicas(2)) == 2
        wait_until_routed(server, 2, tmp_path)
        # Each prompt served once (where its fresh connection landed), then streamed from fresh
        # connections again: those entering at the other replica are forwarded to the holder.
        holder = placed_once([f"stream {i}" for i in range(12)])
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "stream": True}
        forwarded = 0
        for prompt, where in holder.items():
            body["messages"][0]["content"] = prompt
            with (
                httpx.Client(timeout=30) as http,
                http.stream("POST", f"http://127.0.0.1:{DIRECT}/v1/chat/completions", json=body) as r,
            ):
                assert r.status_code == 200
                t0 = time.monotonic()
                arrivals = [time.monotonic() - t0 for _ in r.iter_bytes()]
                assert r.headers[REPLICA_HEADER] == where, (prompt, where, dict(r.headers))
                forwarded += r.headers["x-serving-entry"] != where
            # 200 tokens at 5 ms: ~1 s of stream, in many pieces over that time.
            assert len(arrivals) > 20 and arrivals[-1] - arrivals[0] > 0.5, arrivals[:5]
        assert forwarded, "no stream entered at the replica that does not hold its prompt"
        assert len(set(holder.values())) == 2, holder  # new prompts stayed where their connections landed


class RegistryWatch:
    """`python -m serving.deployments.registry APP --watch`: when each replica was first listed ready, draining."""

    def __init__(self, address: str, log: Path, timeout_s: float = 60) -> None:
        # This stack's cluster by its address: with `auto`, the watch joined the e2e dev stack's
        # cluster (started later, running all along) and never found this app's registry.
        env = {**os.environ, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}
        cmd = [sys.executable, "-m", "serving.deployments.registry", "routed", "--watch", "0.05"]
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        self.first: dict[tuple[str, str], float] = {}  # (replica id, state) -> first wall-clock time seen
        self.snapshots = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # Listening before anything changes (its ray.init took seconds in a loaded CI run).
        deadline = time.monotonic() + timeout_s
        while not self.snapshots and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if not self.snapshots:
            why = self.why()
            self.close()
            raise AssertionError(f"the registry watch printed nothing: {why}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                snap = json.loads(line)
                with self._lock:
                    for e in snap["endpoints"]:
                        self.first.setdefault((e["replica_id"], e["state"]), snap["time"])
                    self.snapshots += 1

    def in_state(self, state: str) -> set[str]:
        """The replicas listed in `state` at some point so far."""
        with self._lock:
            return {rid for rid, s in self.first if s == state}

    def seen(self, replica_id: str, state: str) -> float:
        """When the replica was first listed in `state`, or a failure saying what the watch saw."""
        with self._lock:
            at = self.first.get((replica_id, state))
            listed = sorted(self.first)
        if at is None:
            raise AssertionError(f"{replica_id} never listed {state}; the watch saw {listed}: {self.why()}")
        return at

    def why(self) -> str:
        alive = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return f"watch {alive} after {self.snapshots} snapshots, stderr: {self.log.read_text()[-2000:]!r}"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def scaled(replicas: int) -> dict:
    """config(2)'s app with the replica count set by Serve's own per-deployment override: the app's
    arguments stay the same, so Serve adds or stops replicas beside the running ones (no rebuild)."""
    data = config(2)
    data["applications"][0]["deployments"] = [
        {"name": f"llm-{MODEL}", "autoscaling_config": {"min_replicas": replicas, "max_replicas": replicas}}
    ]
    return data


def test_a_new_replica_gets_requests_from_existing_connections_and_a_draining_one_gets_none(tmp_path):
    """Clients keep their pooled connections while the deployment goes 2 -> 3 -> 2 replicas.

    The replica added gets requests entering at the old ones (the kernel gives it
    no existing connection); the one Serve stops gets no request sent after it
    started draining (plus one refresh). The times are printed; the targets
    (1 s each) are the benchmark's, the bounds here are loose.
    """
    with start_stack(scaled(2), tmp_path / "serve.log") as server:
        first = wait_for_replicas(2)
        assert len(first) == 2
        wait_until_routed(server, 2, tmp_path)
        watch = RegistryWatch(server.gcs_address(), tmp_path / "watch.log")
        client = OpenAI(base_url=f"http://127.0.0.1:{DIRECT}/v1", api_key="x", timeout=30)
        done: list[tuple[float, str, str]] = []  # (wall time sent, entry, served by)
        errors: list[str] = []
        stop = threading.Event()

        def loop(worker: int) -> None:
            i = 0
            while not stop.is_set():
                sent = time.time()
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": f"w{worker} q{i} {sent}"}], max_tokens=4
                    )
                    done.append((sent, raw.headers["x-serving-entry"], raw.headers[REPLICA_HEADER]))
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                i += 1

        try:
            with ThreadPoolExecutor(4) as pool:
                for w in range(4):
                    pool.submit(loop, w)
                time.sleep(2)
                assert server.deploy(scaled(3)).returncode == 0
                deadline = time.monotonic() + 120
                while not (added := {r for _, _, r in done} - first) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert added, "no request reached a third replica"
                (new,) = added
                time.sleep(3)
                assert server.deploy(scaled(2)).returncode == 0
                deadline = time.monotonic() + 120
                while not watch.in_state("draining") and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(5)
                stop.set()
        finally:
            stop.set()
            watch.close()

        ready_at = watch.seen(new, "ready")
        from_old = [(t, e) for t, e, r in done if r == new and e != new]
        assert from_old, "the new replica got no request through an existing entry point"
        joined = min(t for t, _ in from_old) - ready_at
        draining = watch.in_state("draining")
        assert len(draining) == 1, f"draining: {draining}; {watch.why()}"
        (gone,) = draining
        draining_at = watch.seen(gone, "draining")
        after = [t - draining_at for t, _, r in done if r == gone and t > draining_at]
        # Beside the old replicas, not instead of them: both served after the new one joined.
        assert first <= {r for t, _, r in done if ready_at < t < draining_at}, "the scale-up replaced replicas"
        assert any(r == gone for t, _, r in done if t < draining_at)
        print(
            f"\nnew replica: first request through an old entry point {joined:.2f} s after it was listed ready;"
            f" draining replica: {len(after)} requests sent after its drain began, the last"
            f" {max(after, default=0):.2f} s after; {len(done)} requests, {len(errors)} errors"
        )
        assert joined < 5, joined
        assert max(after, default=0) < 3, after
        assert not errors, errors[:3]
