"""Routing benchmark: prefix-cache hit rate, TTFT and load spread per request router.

    python -m loadtests.routing_bench                 # both targets, all routers
    python -m loadtests.routing_bench --short         # a quick run
    python -m loadtests.routing_bench --targets sim --routers power_of_two,prefix_aware
    python -m loadtests.routing_bench --targets sim --cluster 3     # on 3 worker nodes (root)
    python -m loadtests.routing_bench --targets sim --unique-words 250   # no shared prefix

Workload: K distinct long system prompts (default 8 x ~1500 tokens, built
offline from a seeded word list) x many short, unique user turns, sent as
streamed chat completions at a fixed concurrency from one client with one
connection pool. With `--unique-words N`, the workload routing cannot help
with: no system prompt, each request N random words of its own. With
`--adapters N`, each request names one of N LoRA adapters of the model
(uniformly, by a hash of its user turn), every replica keeping
`--adapters-loaded` of them loaded (the simulator takes `--lora-load-s` per
load); the table adds the adapter hit rate: requests that found their adapter
loaded where they were served.

Routers:
  power_of_two, round_robin, prefix_aware
      Serve's proxy path (`ingress: {mode: proxy}`) with that request router.
  connection
      The direct ingress, `routing: connection`: each request served where its
      connection landed (the fast path before request routing).
  request
      The direct ingress, `routing: request`: every request placed by
      serving/routing/scheduler.py where it entered, forwarded as bytes when
      its replica is another.
  haproxy
      HAProxy 2.6 (on PATH) configured by the benchmark, as a stack could run
      it: one process in front of every replica's own port (from the routing
      registry), consistent hashing of the body's first 512 bytes (the model
      and the system prompt's start) with bounded loads (hash-balance-factor
      150), the forward token set so that each replica serves what it gets.
  ray_haproxy
      Ray 2.60's own HAProxy mode (RAY_SERVE_ENABLE_HA_PROXY=1, not with
      --cluster): HAProxy (leastconn) in place of Serve's proxy, in front of
      the ingress deployment, whose handle calls use the prefix-aware router.
The `fwd` column counts requests served by another replica than the one they
entered at (response headers); for `request` a second line compares the
forwarded requests with the local ones of the same run.

Targets:
  sim   8 replicas of the simulated engine (configs/sim-cluster.yaml's settings)
  vllm  2 replicas of the real vLLM CPU engine on the tiny model, prefix caching
        on and a small KV cache (--vllm-kv-mib) so that not every prompt fits

Where: by default each router's config is started with `serve run` on this
machine. With `--cluster N`, on the multi-node harness (tests/cluster.py): a
head and N worker nodes, each in a network namespace with its own address,
replicas spread over the workers (max_replicas_per_node), each config
deployed with `serve deploy`; the client keeps one connection pool per worker
node (as a Kubernetes Service spreads connections over pods).

Per-replica counters come from the engines themselves: the replicas run the
engines below (`engine: loadtests.routing_bench:Bench*Engine`), which write
`Engine.stats()` to a JSON file per replica every half second. For vLLM the
prefix-cache counters are vLLM's own `vllm:prefix_cache_queries` /
`vllm:prefix_cache_hits` counters, as `VLLMEngine.stats()` reports them.

Prints one table per target and writes JSON to loadtests/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from loadtests.servers import ManagedProcess, ServeProcess
from loadtests.sse import aiter_events
from serving.config import ModelConfig
from serving.engine.adapters import AdapterCatalog
from serving.engine.simulator import SimulatedEngine, render_chat, tokenize
from serving.engine.vllm_engine import VLLMEngine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtests" / "results"
STATS_ENV = "ROUTING_BENCH_STATS_DIR"
# Serve's proxy path with each of its request routers, then the direct ingress: `connection`
# (each request served where its connection landed) and `request` (every request placed by
# serving/routing/scheduler.py, forwarded as bytes when its replica is another).
PROXY_ROUTERS = ("power_of_two", "round_robin", "prefix_aware")
DIRECT_ROUTING = ("connection", "request")
# HAProxy 2.6 configured by the stack in front of the replicas' own ports (the "routing
# process" design): consistent hashing of the body's first bytes (model + system prompt)
# with bounded loads, the forward token set so that each replica serves what it gets.
HAPROXY = "haproxy"
# Ray 2.60's own HAProxy mode (RAY_SERVE_ENABLE_HA_PROXY=1): HAProxy (leastconn) in place of
# Serve's proxy, in front of the ingress deployment, which calls the model through a handle
# placed by its prefix-aware router. This machine only (the cluster's nodes get no such env).
RAY_HAPROXY = "ray_haproxy"
ROUTERS = PROXY_ROUTERS + DIRECT_ROUTING + (HAPROXY, RAY_HAPROXY)
APP = "routing-bench"
MODEL = "bench-llm"

# -- engines run inside the replicas ---------------------------------------------------


def _stats_writer(engine) -> asyncio.Task | None:
    """Every 0.5 s, write `engine.stats()` to $ROUTING_BENCH_STATS_DIR/<pid>.json."""
    folder = os.environ.get(STATS_ENV)
    if not folder:
        return None
    path = Path(folder) / f"{os.getpid()}.json"

    async def loop():
        while True:
            stats = await engine.stats()
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(stats))
            tmp.replace(path)
            await asyncio.sleep(0.5)

    return asyncio.get_running_loop().create_task(loop())


class BenchSimEngine(SimulatedEngine):
    """The simulated engine, publishing its counters for the benchmark."""

    def __init__(self, cfg: ModelConfig) -> None:
        adapters = AdapterCatalog(cfg.id, cfg.lora) if cfg.lora is not None else None
        super().__init__(SimulatedEngine.from_engine_args(cfg.engine_args).config, adapters=adapters)
        self._writer = None

    async def start(self):
        info = await super().start()
        self._writer = _stats_writer(self)
        return info

    async def shutdown(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        await super().shutdown()


class BenchVLLMEngine(VLLMEngine):
    """The vLLM engine plus a request count, its stats (with vLLM's prefix-cache counters) published per replica."""

    def __init__(self, cfg: ModelConfig) -> None:
        from serving.engine.factory import resolve_source

        adapters = AdapterCatalog(cfg.id, cfg.lora) if cfg.lora is not None else None
        super().__init__(resolve_source(cfg.source), cfg.id, cfg.engine_args, adapters=adapters)
        self._requests = 0
        self._writer = None
        self._log: Path | None = None

    async def start(self):
        info = await super().start()
        self._writer = _stats_writer(self)
        folder = os.environ.get(STATS_ENV)
        if folder:
            self._log = Path(folder) / f"{os.getpid()}.requests.jsonl"
        return info

    def generate(self, request):
        self._requests += 1
        if self._log is None:
            return super().generate(request)
        return self._logged(request)

    async def _logged(self, request):
        """Each request's system prompt (its key), prompt and cached tokens, to <pid>.requests.jsonl."""
        system = next((m.get("content") for m in request.messages or () if m.get("role") == "system"), "")
        key = system.split(".", 1)[0] if system else None
        t0, first, t1 = time.time(), None, None
        try:
            async for out in super().generate(request):
                if first is None:
                    first, t1 = out, time.time()
                yield out
        finally:  # a stream closed early too: its line
            line = {
                "t0": t0,
                "t1": t1,
                "key": key,
                "prompt": first.prompt_tokens if first else None,
                "cached": first.cached_tokens if first else None,  # vLLM's num_cached_tokens
            }
            with self._log.open("a") as f:
                f.write(json.dumps(line) + "\n")

    async def stats(self) -> dict[str, float]:
        # VLLMEngine.stats() carries vLLM's prefix_cache_queries/hits counters.
        out = await super().stats()
        out["requests"] = float(self._requests)
        return out

    async def shutdown(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        await super().shutdown()


# -- workload ------------------------------------------------------------------------------

_WORDS = (
    "account action answer area argument balance basis behavior benefit border budget capital "
    "career channel choice climate comment company concept contract control country credit culture "
    "customer damage debate decade demand design detail device dinner doctor driver economy edition "
    "effort energy engine estate event evidence expert factor family feature figure finance flight "
    "format friend future garden growth health history holiday husband impact income industry "
    "insurance interest island journal judge kitchen language leader library market measure medium "
    "member memory method minute moment mother nation network number object office option output "
    "owner parent partner patient pattern period person picture planet player policy pressure "
    "process product profile program project purpose quality question reason record region report "
    "resource result review river sample school season sector series service signal source speech "
    "station status storage strategy street student studio subject success summer support surface "
    "system teacher theory thought ticket traffic training travel trouble valley version village "
    "vision volume weather window winter worker writer"
).split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


def system_prompts(count: int, target_tokens: int, count_tokens) -> list[str]:
    """`count` distinct system prompts of about `target_tokens` tokens each, deterministic."""
    prompts = []
    for i in range(count):
        rng = random.Random(1000 + i)
        text = f"System prompt {i}. You are agent number {i} of the benchmark; follow these rules."
        while count_tokens(text) < target_tokens:
            text += " " + _words(rng, 25) + "."
        prompts.append(text)
    return prompts


def requests_plan(n: int, prompts: int, seed: int = 7, unique_words: int = 0) -> list[tuple[int, str]]:
    """(system prompt index, unique user turn) for each request.

    With `unique_words`, the workload with no shared prefix: no system prompt (index -1),
    and each user turn is `unique_words` random words, its own from the first token on.
    """
    rng = random.Random(seed)
    if unique_words:
        return [(-1, f"Turn {k}: {_words(rng, unique_words)}?") for k in range(n)]
    return [(rng.randrange(prompts), f"Turn {k}: {_words(rng, 12)}?") for k in range(n)]


def sim_token_counter():
    return lambda text: len(tokenize(render_chat([{"role": "system", "content": text}])))


def vllm_token_counter():
    from transformers import AutoTokenizer

    from serving.models.tiny_llama import ensure_tiny_llama

    tok = AutoTokenizer.from_pretrained(ensure_tiny_llama())
    return lambda text: len(tok.encode(text))


# -- client ---------------------------------------------------------------------------------


async def run_load(
    base_urls: list[str],
    prompts: list[str],
    plan: list[tuple[int, str]],
    concurrency: int,
    max_tokens: int,
    timeout_s: float,
    adapters: int = 0,
) -> dict[str, Any]:
    """`concurrency` workers, spread over one pooled client per base URL (a cluster: one per node,
    as a Kubernetes Service spreads a client's connections over the pods). With `adapters`, each
    request names one of that many LoRA adapters (by a hash of its user turn: uniform, repeatable)."""
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    errors: list[str] = []
    # (forwarded, TTFT, latency, output tokens, prompt cache hit: None when the server does not say)
    per_request: list[tuple[bool, float, float, int, bool | None]] = []
    tokens = 0
    forwarded = 0

    async def worker(client: httpx.AsyncClient):
        nonlocal tokens, forwarded
        while True:
            try:
                idx, user = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            messages = [{"role": "user", "content": user}]
            if idx >= 0:
                messages.insert(0, {"role": "system", "content": prompts[idx]})
            model = f"{MODEL}:a{zlib.crc32(user.encode()) % adapters}" if adapters else MODEL
            body = {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "stream": True,
                "ignore_eos": True,
                "stream_options": {"include_usage": True},
            }
            t0 = time.perf_counter()
            first = None
            moved = False
            completion = 0
            hit = None
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {(await r.aread())[:200]!r}")
                        continue
                    entry, served = r.headers.get("x-serving-entry"), r.headers.get("x-serving-replica")
                    moved = bool(entry and served and entry != served)
                    forwarded += moved
                    async for event in aiter_events(r.aiter_bytes()):
                        if event.done:
                            continue
                        data = event.json()
                        if "error" in data:
                            errors.append(str(data["error"])[:200])
                            break
                        if first is None and data.get("choices") and data["choices"][0]["delta"].get("content"):
                            first = time.perf_counter() - t0
                        if data.get("usage"):
                            usage = data["usage"]
                            completion = usage["completion_tokens"]
                            tokens += completion
                            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
                            if cached is not None:
                                hit = usage["prompt_tokens"] - cached <= PREFIX_MISS_TOKENS
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if first is not None:
                per_request.append((moved, first, time.perf_counter() - t0, completion, hit))

    per_client = -(-concurrency // len(base_urls))
    limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits))
            for url in base_urls
        ]
        t0 = time.perf_counter()
        workers = (worker(clients[i % len(clients)]) for i in range(concurrency))
        await asyncio.wait_for(asyncio.gather(*workers), timeout=timeout_s * 4)
        wall = time.perf_counter() - t0
    return {
        "ttfts": [r[1] for r in per_request],
        "latencies": [r[2] for r in per_request],
        "errors": errors,
        "tokens": tokens,
        "wall_s": wall,
        "forwarded": forwarded,
        "per_request": per_request,
    }


def by_placement(per_request: list[tuple[bool, float, float, int, bool | None]]) -> dict[str, dict[str, float]]:
    """Requests served where they entered against forwarded ones, in the same run: TTFT p50 and
    each request's own output tokens/s (tokens over its latency), averaged. Also among cache hits only
    (`local_hits`, `forwarded_hits`, where the server reports cached tokens): the hop's own cost, apart
    from which side had more misses (a prompt moving to its home is forwarded, and misses there)."""
    out = {}
    groups = (
        ("local", False, None),
        ("forwarded", True, None),
        ("local_hits", False, True),
        ("forwarded_hits", True, True),
    )
    for name, moved, hit in groups:
        rows = [r for r in per_request if r[0] == moved and (hit is None or r[4] is hit)]
        if rows:
            out[name] = {
                "requests": len(rows),
                "ttft_p50_s": percentile([r[1] for r in rows], 50),
                "tokens_per_s_per_request": statistics.fmean(r[3] / r[2] for r in rows),
            }
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


# -- servers ----------------------------------------------------------------------------------


def adapter_store(count: int) -> Path:
    """A folder of `count` adapters a0.. for the tiny model (serving/models/tiny_lora.py), built once."""
    from serving.models.tiny_lora import ensure_tiny_lora

    store = Path(tempfile.gettempdir()) / f"routing-bench-adapters-{count}"
    for i in range(count):
        if not (store / f"a{i}" / "adapter_config.json").exists():
            shutil.copytree(ensure_tiny_lora(f"a{i}"), store / f"a{i}", dirs_exist_ok=True)
    return store


def read_stats(folder: Path) -> dict[str, dict[str, float]]:
    out = {}
    for f in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            out[f.stem] = json.loads(f.read_text())
    return out


def read_request_logs(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Each vLLM replica's requests (BenchVLLMEngine's log), by pid, in start order."""
    out = {}
    for f in folder.glob("*.requests.jsonl"):
        lines = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        out[f.name.split(".")[0]] = sorted(lines, key=lambda r: r["t0"])
    return out


# Uncached tokens above this: the request missed (part of) its system prompt, not only
# its own user turn (~75 tokens) and the partly filled block at the prompt's end (< 32).
PREFIX_MISS_TOKENS = 160


def miss_breakdown(logs: dict[str, list[dict[str, Any]]], since: float) -> dict[str, Any] | None:
    """Where the measured requests' uncached prompt tokens went, from vLLM's per-request cached tokens.

    `tail`: a request that missed only its own turn and the last partial block (can't hit);
    `cold`: its key had not reached its first token on that replica before it started (the
    key's first request there, or one sent beside it); `evicted`: the key was there before
    and was missed anyway (evicted by other keys). Per replica: the keys it served."""
    if not logs:
        return None
    tokens = {"tail": 0, "cold": 0, "evicted": 0}
    requests = {"tail": 0, "cold": 0, "evicted": 0}
    total = 0
    starts = sorted(r["t0"] for lines in logs.values() for r in lines if r["t0"] >= since)
    middle = starts[len(starts) // 2] if starts else since
    halves = [[0, 0], [0, 0]]  # (prompt, cached) tokens of the measured requests started before / after the middle
    keys_per_replica = {}
    holders: dict[str, set[str]] = {}
    for pid, lines in logs.items():
        done: dict[str, float] = {}  # key -> the earliest first-token time of its requests here
        served = set()
        for r in lines:
            key = r.get("key")
            if r["t0"] >= since and r.get("cached") is not None and r.get("prompt"):
                uncached = r["prompt"] - r["cached"]
                total += r["prompt"]
                kind = (
                    "tail"
                    if uncached <= PREFIX_MISS_TOKENS
                    else "evicted"
                    if key in done and done[key] < r["t0"]
                    else "cold"
                )
                tokens[kind] += uncached
                requests[kind] += 1
                half = halves[r["t0"] >= middle]
                half[0] += r["prompt"]
                half[1] += r["cached"]
                served.add(key)
                holders.setdefault(key, set()).add(pid)
            if r.get("t1") is not None and key not in done:
                done[key] = r["t1"]
        keys_per_replica[pid] = len(served)
    return {
        "prompt_tokens": total,
        "uncached_share": {k: round(v / total, 4) if total else None for k, v in tokens.items()},
        "requests": requests,
        "keys_per_replica": sorted(keys_per_replica.values(), reverse=True),
        "keys_on_two_or_more": sum(1 for h in holders.values() if len(h) > 1),
        # vLLM's per-request cached tokens over prompt tokens, in the first and the second half of the
        # measured requests: how much of the miss is settling after the warm-up
        "hit_rate_by_half": [round(c / p, 3) if p else None for p, c in halves],
    }


def sim_model(router: str, stats_dir: Path, replicas: int) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "configs" / "sim-cluster.yaml").read_text())
    model = dict(base["applications"][0]["args"]["models"][0])
    model.update(
        id=MODEL,
        engine="loadtests.routing_bench:BenchSimEngine",
        router=router,
        env={STATS_ENV: str(stats_dir)},
    )
    model["deployment"] = {
        **model.get("deployment", {}),
        "autoscaling": {"min_replicas": replicas, "max_replicas": replicas, "target_ongoing_requests": 8},
    }
    return model


def vllm_model(router: str, stats_dir: Path, replicas: int, kv_mib: int) -> dict[str, Any]:
    return {
        "id": MODEL,
        "source": "builtin:tiny-llama",
        "engine": "loadtests.routing_bench:BenchVLLMEngine",
        "engine_args": {
            "max_model_len": 4096,
            "dtype": "bfloat16",
            "enable_prefix_caching": True,
            "kv_cache_memory_bytes": kv_mib * 2**20,
            # CPU default is 128: finer blocks, as on GPUs (16), lose less of each prompt's tail.
            "block_size": 32,
            "max_num_seqs": 16,
        },
        "env": {STATS_ENV: str(stats_dir)},
        "router": router,
        "deployment": {
            "num_cpus": 0.5,
            "max_ongoing_requests": 64,
            "autoscaling": {"min_replicas": replicas, "max_replicas": replicas, "target_ongoing_requests": 8},
        },
    }


def serve_config(
    model: dict[str, Any], port: int, routing: str | None = None, host: str = "127.0.0.1"
) -> dict[str, Any]:
    """Serve's proxy on `port` (routing None), or the direct ingress on `port` with `routing`."""
    if routing is None:
        ingress: dict[str, Any] = {"mode": "proxy", "num_cpus": 0.1}
        proxy_port = port
    else:
        ingress = {"mode": "direct", "host": host, "port": port, "routing": routing}
        proxy_port = port + 1
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": proxy_port},
        "applications": [
            {
                "name": APP,
                "route_prefix": "/",
                "import_path": "serving.deployments.app:build_app",
                "args": {"ingress": ingress, "auth": "open", "models": [model]},
            }
        ],
    }


_SNAPSHOT = """
import json, ray
ray.init(namespace="serving", log_to_driver=False, logging_level="ERROR")
from serving.deployments.registry import forward_token, registry_name
actor = ray.get_actor(registry_name(%r), namespace="serving")
print(json.dumps({"endpoints": ray.get(actor.exchange.remote()), "token": forward_token()}))
"""


def routing_snapshot(stack, n: int, timeout_s: float = 120) -> tuple[list[str], str]:
    """The model's `n` ready replicas' own addresses (from the app's registry actor) and the forward token."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = stack.python(_SNAPSHOT % APP)
        if done.returncode == 0:
            data = json.loads(done.stdout.strip().splitlines()[-1])
            ready = sorted(e["address"] for e in data["endpoints"] if e["model"] == MODEL and e["state"] == "ready")
            if len(ready) == n:
                return ready, data["token"]
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the registry never listed {n} ready replicas: {done.stdout[-500:]} {done.stderr[-2000:]}"
            )
        time.sleep(2)


HAPROXY_CFG = """global
    maxconn 4096
    nbthread 1
defaults
    mode http
    timeout connect 2s
    timeout client 300s
    timeout server 300s
    option http-buffer-request
frontend llm
    bind {bind}
    default_backend replicas
backend replicas
    # Bytes 0-511 of the body: {{"model": ..., "messages": [{{"role": "system", "content": "...
    balance hash req.body,bytes(0,512)
    hash-type consistent
    # Bounded loads: no replica above 1.5x the mean of connections in use.
    hash-balance-factor 150
    http-reuse always
    http-request set-header x-serving-forward {token}
{servers}
"""


class HAProxyProcess(ManagedProcess):
    """HAProxy in front of the replicas' own ports; ready once it answers /ready through a replica."""

    def __init__(self, addresses: list[str], token: str, port: int, log_path: Path) -> None:
        super().__init__(f"http://127.0.0.1:{port}/ready", log_path)
        servers = "\n".join(f"    server r{i} {a}" for i, a in enumerate(addresses))
        self.config = log_path.with_suffix(".cfg")
        self.config.write_text(HAPROXY_CFG.format(bind=f"127.0.0.1:{port}", token=token, servers=servers))
        self.url = f"http://127.0.0.1:{port}"

    def command(self) -> list[str]:
        return ["haproxy", "-db", "-f", str(self.config)]


def wait_for_replicas(folder: Path, n: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while len(read_stats(folder)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(read_stats(folder))} of {n} replicas reported stats")
        time.sleep(0.5)


class LocalStack:
    """Each config started with `serve run` on this machine; the client on loopback."""

    host = "127.0.0.1"
    nodes = 1

    def __init__(self, port: int, log_dir: Path) -> None:
        self.port, self.log_dir = port, log_dir

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def python(self, code: str):
        """Run `code` as a Ray driver of the running stack's cluster."""
        env = {**os.environ, "RAY_ADDRESS": "auto"}
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
        )

    @contextlib.contextmanager
    def serving(self, config: dict[str, Any], name: str, env: dict[str, str] | None = None) -> Iterator[list[str]]:
        ready = f"http://127.0.0.1:{self.port}/ready"
        log = self.log_dir / f"serve-{name}.log"
        with ServeProcess.from_dict(config, ready, log, env).start(timeout_s=600):
            yield [f"http://127.0.0.1:{self.port}"]


class ClusterStack:
    """The multi-node harness (tests/cluster.py): a head without CPUs and `nodes` worker nodes,
    each in a network namespace of its own with its own address. Each config is deployed with
    `serve deploy` and removed with `serve shutdown`; the client spreads its workers over one
    connection pool per worker node, as a Kubernetes Service spreads connections over pods."""

    host = "0.0.0.0"

    def __init__(self, nodes: int, port: int) -> None:
        from tests.cluster import Cluster, NodeSpec

        self.nodes, self.port = nodes, port
        self.cluster = Cluster([NodeSpec()] + [NodeSpec(cpus=2) for _ in range(nodes)])

    def __enter__(self) -> ClusterStack:
        self.cluster.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.down()

    def python(self, code: str):
        """Run `code` as a Ray driver on the head node (in its namespace)."""
        env = {**os.environ, **self.cluster.ray_env(), "RAY_ADDRESS": self.cluster.gcs_address}
        cmd = ["ip", "netns", "exec", self.cluster.head.netns, sys.executable, "-c", code]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)

    @contextlib.contextmanager
    def serving(self, config: dict[str, Any], name: str, env: dict[str, str] | None = None) -> Iterator[list[str]]:
        if env:
            raise ValueError("the cluster's nodes run with the environment they started with")

        from tests.cluster import SERVE

        workers = self.cluster.workers
        self.cluster.deploy(config, timeout_s=600, ready=[n.url(self.port, "/ready") for n in workers])
        try:
            yield [n.url(self.port) for n in workers]
        finally:
            subprocess.run(
                [SERVE, "shutdown", "-y", "--address", self.cluster.dashboard],
                capture_output=True,
                timeout=180,
                env={**os.environ, **self.cluster.ray_env()},
            )
            deadline = time.monotonic() + 120
            while any(n.processes("ServeReplica") for n in workers) and time.monotonic() < deadline:
                time.sleep(1)


def bench_one(target: str, router: str, args, prompts: list[str], stack) -> dict[str, Any]:
    stats_dir = Path(tempfile.mkdtemp(prefix="routing-bench-stats-"))
    try:
        routing = "request" if router == HAPROXY else router if router in DIRECT_ROUTING else None
        # `request` placement reads the model's router_* settings
        policy = "prefix_aware" if routing or router == RAY_HAPROXY else router
        if target == "sim":
            replicas, conc, n = args.sim_replicas, args.sim_concurrency, args.sim_requests
            model = sim_model(policy, stats_dir, replicas)
        else:
            replicas, conc, n = args.vllm_replicas, args.vllm_concurrency, args.vllm_requests
            model = vllm_model(policy, stats_dir, replicas, args.vllm_kv_mib)
        if stack.nodes > 1:
            model["deployment"]["max_replicas_per_node"] = -(-replicas // stack.nodes)
        if args.router_threshold is not None:
            model["router_imbalance_threshold"] = args.router_threshold
        if args.router_load_factor is not None:
            model["router_load_factor"] = args.router_load_factor
        if args.adapters:
            model["lora"] = {
                "store": str(adapter_store(args.adapters)),
                "max_loaded": args.adapters_loaded,
                "max_loras": min(4, args.adapters_loaded),
                "max_rank": 8,
            }
            if target == "sim":
                model["engine_args"] = {**model.get("engine_args", {}), "lora_load_s": args.lora_load_s}
            else:
                model["engine_args"]["dtype"] = "float32"  # LoRA on vLLM's CPU backend
        unique = args.unique_words
        plan = requests_plan(n, len(prompts), seed=args.seed, unique_words=unique)
        config = serve_config(model, args.port, routing, host=stack.host)
        with contextlib.ExitStack() as running:
            env = {"RAY_SERVE_ENABLE_HA_PROXY": "1"} if router == RAY_HAPROXY else None
            urls = running.enter_context(stack.serving(config, f"{target}-{router}", env))
            wait_for_replicas(stats_dir, replicas)
            if router == HAPROXY:
                addresses, token = routing_snapshot(stack, replicas)
                log = Path(tempfile.mkdtemp(prefix="routing-bench-haproxy-")) / "haproxy.log"
                urls = [running.enter_context(HAProxyProcess(addresses, token, args.port + 2, log)).url]
            warmup = args.warmup if args.warmup is not None else 3 * conc
            if warmup:
                # Steady state: the first cold prefills of every prompt are not measured.
                asyncio.run(
                    run_load(
                        urls,
                        prompts,
                        requests_plan(warmup, len(prompts), seed=args.seed + 1, unique_words=unique),
                        conc,
                        args.max_tokens,
                        args.timeout_s,
                        args.adapters,
                    )
                )
            time.sleep(1.0)
            before = read_stats(stats_dir)
            measured_from = time.time()
            load = asyncio.run(run_load(urls, prompts, plan, conc, args.max_tokens, args.timeout_s, args.adapters))
            time.sleep(1.5)  # the replicas' last stats writes
            after = read_stats(stats_dir)
            request_logs = read_request_logs(stats_dir)
            misses = miss_breakdown(request_logs, measured_from)
    finally:
        shutil.rmtree(stats_dir, ignore_errors=True)

    def delta(pid: str, key: str) -> float:
        return after.get(pid, {}).get(key, 0.0) - before.get(pid, {}).get(key, 0.0)

    per_replica = sorted((int(delta(pid, "requests")) for pid in after), reverse=True)
    replica_hit_rates = sorted(
        (
            round(delta(pid, "prefix_cache_hits") / delta(pid, "prefix_cache_queries"), 3)
            for pid in after
            if delta(pid, "prefix_cache_queries")
        ),
        reverse=True,
    )
    queries = sum(delta(pid, "prefix_cache_queries") for pid in after)
    hits = sum(delta(pid, "prefix_cache_hits") for pid in after)
    ok = len(load["ttfts"])
    fair = sum(per_replica) / max(1, replicas)
    adapter_hits = sum(delta(pid, "lora_hits") for pid in after)
    adapter_loads = sum(delta(pid, "lora_loads") for pid in after)
    return {
        "target": target,
        "router": router,
        "nodes": stack.nodes,
        "workload": f"unique prompts of {unique} words" if unique else "shared system prompts",
        "replicas": replicas,
        "warmup_requests": warmup,
        "router_settings": {k: v for k, v in model.items() if k.startswith("router_")},
        "concurrency": conc,
        "requests": n,
        "ok": ok,
        "errors": len(load["errors"]),
        "error_samples": load["errors"][:3],
        "prefix_cache_hit_rate": hits / queries if queries else float("nan"),
        "adapters": args.adapters,
        # requests that found their adapter loaded on the replica that served them
        "adapter_hit_rate": adapter_hits / (adapter_hits + adapter_loads) if adapter_hits + adapter_loads else None,
        "adapter_loads": adapter_loads,
        "adapter_evictions": sum(delta(pid, "lora_evictions") for pid in after),
        "prefix_cache_queries": queries,
        "prefix_cache_hits": hits,
        "ttft_p50_s": percentile(load["ttfts"], 50),
        "ttft_p99_s": percentile(load["ttfts"], 99),
        "ttft_mean_s": statistics.fmean(load["ttfts"]) if load["ttfts"] else float("nan"),
        "latency_p50_s": percentile(load["latencies"], 50),
        "requests_per_s": ok / load["wall_s"],
        "output_tokens_per_s": load["tokens"] / load["wall_s"],
        "wall_s": load["wall_s"],
        "requests_per_replica": per_replica,
        "hit_rate_per_replica": replica_hit_rates,
        "max_over_fair_share": (per_replica[0] / fair) if per_replica and fair else float("nan"),
        "forwarded": load["forwarded"],
        "by_placement": by_placement(load["per_request"]),
        "misses": misses,
        # vLLM: each replica's requests (start and first-token times, key, prompt and cached tokens)
        "request_logs": request_logs or None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'router':<13} {'hit rate':>8} {'TTFT p50':>9} {'TTFT p99':>9} {'req/s':>6} {'tok/s':>7} {'max/fair':>8}"
        f" {'err':>4} {'fwd':>5}  requests per replica"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['router']:<13} {r['prefix_cache_hit_rate']:>8.3f} {r['ttft_p50_s'] * 1000:>7.0f}ms"
            f" {r['ttft_p99_s'] * 1000:>7.0f}ms {r['requests_per_s']:>6.1f} {r['output_tokens_per_s']:>7.0f}"
            f" {r['max_over_fair_share']:>8.2f} {r['errors']:>4} {r['forwarded']:>5}  {r['requests_per_replica']}"
        )
        if r.get("adapter_hit_rate") is not None:
            lines.append(
                f"{'':<13} adapters: hit rate {r['adapter_hit_rate']:.3f}, loads {r['adapter_loads']:.0f},"
                f" evictions {r['adapter_evictions']:.0f}"
            )
        placed = r.get("by_placement", {})
        for local_name, moved_name, label in (
            ("local", "forwarded", "local"),
            ("local_hits", "forwarded_hits", "hits only: local"),
        ):
            if local_name not in placed or moved_name not in placed:
                continue
            local, moved = placed[local_name], placed[moved_name]
            lines.append(
                f"{'':<13} {label} {local['requests']}: TTFT p50 {local['ttft_p50_s'] * 1000:.0f}ms,"
                f" {local['tokens_per_s_per_request']:.1f} tok/s per request; forwarded {moved['requests']}:"
                f" TTFT p50 {moved['ttft_p50_s'] * 1000:.0f}ms, {moved['tokens_per_s_per_request']:.1f} tok/s per"
                f" request ({moved['tokens_per_s_per_request'] / local['tokens_per_s_per_request']:.2f}x)"
            )
        m = r.get("misses")
        if m and m["prompt_tokens"]:
            share, n = m["uncached_share"], m["requests"]
            lines.append(
                f"{'':<13} uncached: own turn and last block {share['tail']:.3f} ({n['tail']} req),"
                f" cold key {share['cold']:.3f} ({n['cold']}), evicted {share['evicted']:.3f} ({n['evicted']});"
                f" keys per replica {m['keys_per_replica']}, {m['keys_on_two_or_more']} on 2+;"
                f" hit rate first / second half {m['hit_rate_by_half'][0]} / {m['hit_rate_by_half'][1]}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.routing_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="sim,vllm", help="comma-separated: sim, vllm")
    p.add_argument("--routers", default=",".join(ROUTERS), help="comma-separated: " + ", ".join(ROUTERS))
    p.add_argument("--prompts", type=int, default=8, help="distinct system prompts")
    p.add_argument("--system-tokens", type=int, default=1500, help="tokens per system prompt")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument(
        "--router-threshold", type=int, default=None, help="prefix_aware: override router_imbalance_threshold"
    )
    p.add_argument("--router-load-factor", type=float, default=None, help="prefix_aware: override router_load_factor")
    p.add_argument("--sim-replicas", type=int, default=8)
    p.add_argument("--sim-concurrency", type=int, default=24)
    p.add_argument("--sim-requests", type=int, default=800)
    p.add_argument("--vllm-replicas", type=int, default=2)
    p.add_argument("--vllm-concurrency", type=int, default=8)
    p.add_argument("--vllm-requests", type=int, default=160)
    p.add_argument(
        "--vllm-kv-mib", type=int, default=10, help="KV cache per vLLM replica (1 MiB ~ 1000 tokens of the tiny model)"
    )
    p.add_argument("--port", type=int, default=8040, help="Serve proxy port of the benchmarked cluster")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="unmeasured requests first (default 3 x concurrency; 0: measure the cold start)",
    )
    p.add_argument(
        "--unique-words",
        type=int,
        default=0,
        help="the workload with no shared prefix: no system prompt, each request N random words of its own",
    )
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="NODES",
        help="run on the multi-node harness (tests/cluster.py, root): a head and NODES worker nodes",
    )
    p.add_argument(
        "--adapters", type=int, default=0, help="LoRA workload: each request names one of N adapters of the model"
    )
    p.add_argument("--adapters-loaded", type=int, default=4, help="adapters each replica keeps loaded (max_loaded)")
    p.add_argument("--lora-load-s", type=float, default=0.1, help="sim: the time one adapter load takes")
    p.add_argument("--timeout-s", type=float, default=120)
    p.add_argument("--short", action="store_true", help="a quick run: fewer requests")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default loadtests/results/routing-<time>.json)")
    args = p.parse_args(argv)
    if args.short:
        args.sim_requests = min(args.sim_requests, 240)
        args.vllm_requests = min(args.vllm_requests, 48)
    targets = [t for t in args.targets.split(",") if t]
    routers = [r for r in args.routers.split(",") if r]
    for r in routers:
        if r not in ROUTERS:
            p.error(f"unknown router {r!r}")
    if {HAPROXY, RAY_HAPROXY} & set(routers) and not shutil.which("haproxy"):
        p.error("the haproxy router needs HAProxy >= 2.6 on PATH (Debian: apt-get install haproxy)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="routing-bench-logs-"))
    out = args.out or RESULTS / f"routing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [],
    }
    stack = ClusterStack(args.cluster, args.port) if args.cluster else LocalStack(args.port, log_dir)
    with stack:
        for target in targets:
            counter = sim_token_counter() if target == "sim" else vllm_token_counter()
            prompts = system_prompts(args.prompts, args.system_tokens, counter)
            rows = []
            for router in routers:
                print(f"[{target}] {router}: starting", flush=True)
                row = bench_one(target, router, args, prompts, stack)
                row["system_prompt_tokens"] = [counter(t) for t in prompts]
                rows.append(row)
                report["runs"].append(row)
                out.write_text(json.dumps(report, indent=2))
            replicas = rows[0]["replicas"] if rows else 0
            workload = (
                f"unique prompts of {args.unique_words} words"
                if args.unique_words
                else f"{args.prompts} system prompts x ~{args.system_tokens} tokens"
            )
            print(
                f"\n== {target}: {replicas} replicas on {stack.nodes} node(s), {workload},"
                f" concurrency {rows[0]['concurrency'] if rows else 0}, {rows[0]['requests'] if rows else 0} requests,"
                f" max_tokens {args.max_tokens}"
            )
            print(table(rows), flush=True)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
