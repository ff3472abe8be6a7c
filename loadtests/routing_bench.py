"""Routing benchmark: prefix-cache hit rate, TTFT and load spread per request router.

    python -m loadtests.routing_bench                 # both targets, all routers
    python -m loadtests.routing_bench --short         # a quick run
    python -m loadtests.routing_bench --targets sim --routers power_of_two,prefix_aware

Workload: K distinct long system prompts (default 8 x ~1500 tokens, built
offline from a seeded word list) x many short, unique user turns, sent as
streamed chat completions at a fixed concurrency from one client with one
connection pool. Routers: Serve's proxy path (`ingress: {mode: proxy}`) with
each of its request routers (`power_of_two`, `round_robin`, `prefix_aware`),
and the direct ingress with `routing: connection` (each request served where
its connection landed: today's fast path before request routing) or
`routing: request` (every request placed by serving/routing/scheduler.py;
the `fwd` column counts those served by another replica than the one they
entered at, from the response headers).

Targets, each started with `serve run` once per router:
  sim   8 replicas of the simulated engine (configs/sim-cluster.yaml's settings)
  vllm  2 replicas of the real vLLM CPU engine on the tiny model, prefix caching
        on and a small KV cache (--vllm-kv-mib) so that not every prompt fits

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
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from loadtests.servers import ServeProcess
from loadtests.sse import aiter_events
from serving.config import ModelConfig
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
ROUTERS = PROXY_ROUTERS + DIRECT_ROUTING
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
        super().__init__(SimulatedEngine.from_engine_args(cfg.engine_args).config)
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

        super().__init__(resolve_source(cfg.source), cfg.id, cfg.engine_args)
        self._requests = 0
        self._writer = None

    async def start(self):
        info = await super().start()
        self._writer = _stats_writer(self)
        return info

    def generate(self, request):
        self._requests += 1
        return super().generate(request)

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


def requests_plan(n: int, prompts: int, seed: int = 7) -> list[tuple[int, str]]:
    """(system prompt index, unique short user turn) for each request."""
    rng = random.Random(seed)
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
    base_url: str, prompts: list[str], plan: list[tuple[int, str]], concurrency: int, max_tokens: int, timeout_s: float
) -> dict[str, Any]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    ttfts: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    tokens = 0
    forwarded = 0

    async def worker(client: httpx.AsyncClient):
        nonlocal tokens, forwarded
        while True:
            try:
                idx, user = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {
                "model": MODEL,
                "messages": [{"role": "system", "content": prompts[idx]}, {"role": "user", "content": user}],
                "max_tokens": max_tokens,
                "stream": True,
                "ignore_eos": True,
                "stream_options": {"include_usage": True},
            }
            t0 = time.perf_counter()
            first = None
            try:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {(await r.aread())[:200]!r}")
                        continue
                    entry, served = r.headers.get("x-serving-entry"), r.headers.get("x-serving-replica")
                    forwarded += bool(entry and served and entry != served)
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
                            tokens += data["usage"]["completion_tokens"]
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if first is not None:
                ttfts.append(first)
                latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(concurrency))), timeout=timeout_s * 4)
        wall = time.perf_counter() - t0
    return {
        "ttfts": ttfts,
        "latencies": latencies,
        "errors": errors,
        "tokens": tokens,
        "wall_s": wall,
        "forwarded": forwarded,
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


# -- servers ----------------------------------------------------------------------------------


def read_stats(folder: Path) -> dict[str, dict[str, float]]:
    out = {}
    for f in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            out[f.stem] = json.loads(f.read_text())
    return out


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


def serve_config(model: dict[str, Any], port: int, routing: str | None = None) -> dict[str, Any]:
    """Serve's proxy on `port` (routing None), or the direct ingress on `port` with `routing`."""
    if routing is None:
        ingress: dict[str, Any] = {"mode": "proxy", "num_cpus": 0.1}
        proxy_port = port
    else:
        ingress = {"mode": "direct", "host": "127.0.0.1", "port": port, "routing": routing}
        proxy_port = port + 1
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": proxy_port},
        "applications": [
            {
                "name": "routing-bench",
                "route_prefix": "/",
                "import_path": "serving.deployments.app:build_app",
                "args": {"ingress": ingress, "auth": "open", "models": [model]},
            }
        ],
    }


def wait_for_replicas(folder: Path, n: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while len(read_stats(folder)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(read_stats(folder))} of {n} replicas reported stats")
        time.sleep(0.5)


def bench_one(target: str, router: str, args, prompts: list[str], log_dir: Path) -> dict[str, Any]:
    stats_dir = Path(tempfile.mkdtemp(prefix="routing-bench-stats-"))
    try:
        routing = router if router in DIRECT_ROUTING else None
        policy = "prefix_aware" if routing else router  # `request` placement reads the model's router_* settings
        if target == "sim":
            replicas, conc, n = args.sim_replicas, args.sim_concurrency, args.sim_requests
            model = sim_model(policy, stats_dir, replicas)
        else:
            replicas, conc, n = args.vllm_replicas, args.vllm_concurrency, args.vllm_requests
            model = vllm_model(policy, stats_dir, replicas, args.vllm_kv_mib)
        if args.router_threshold is not None:
            model["router_imbalance_threshold"] = args.router_threshold
        if args.router_load_factor is not None:
            model["router_load_factor"] = args.router_load_factor
        plan = requests_plan(n, len(prompts), seed=args.seed)
        log = log_dir / f"serve-{target}-{router}.log"
        ready = f"http://127.0.0.1:{args.port}/ready"
        with ServeProcess.from_dict(serve_config(model, args.port, routing), ready, log).start(timeout_s=600):
            wait_for_replicas(stats_dir, replicas)
            warmup = args.warmup if args.warmup is not None else 3 * conc
            if warmup:
                # Steady state: the first cold prefills of every prompt are not measured.
                asyncio.run(
                    run_load(
                        f"http://127.0.0.1:{args.port}",
                        prompts,
                        requests_plan(warmup, len(prompts), seed=args.seed + 1),
                        conc,
                        args.max_tokens,
                        args.timeout_s,
                    )
                )
            time.sleep(1.0)
            before = read_stats(stats_dir)
            load = asyncio.run(
                run_load(f"http://127.0.0.1:{args.port}", prompts, plan, conc, args.max_tokens, args.timeout_s)
            )
            time.sleep(1.5)  # the replicas' last stats writes
            after = read_stats(stats_dir)
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
    return {
        "target": target,
        "router": router,
        "replicas": replicas,
        "warmup_requests": warmup,
        "router_settings": {k: v for k, v in model.items() if k.startswith("router_")},
        "concurrency": conc,
        "requests": n,
        "ok": ok,
        "errors": len(load["errors"]),
        "error_samples": load["errors"][:3],
        "prefix_cache_hit_rate": hits / queries if queries else float("nan"),
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

    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="routing-bench-logs-"))
    out = args.out or RESULTS / f"routing-{time.strftime('%Y%m%d-%H%M%S')}.json"
    report: dict[str, Any] = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": [],
    }
    for target in targets:
        counter = sim_token_counter() if target == "sim" else vllm_token_counter()
        prompts = system_prompts(args.prompts, args.system_tokens, counter)
        rows = []
        for router in routers:
            print(f"[{target}] {router}: starting (log: {log_dir / f'serve-{target}-{router}.log'})", flush=True)
            row = bench_one(target, router, args, prompts, log_dir)
            row["system_prompt_tokens"] = [counter(t) for t in prompts]
            rows.append(row)
            report["runs"].append(row)
            out.write_text(json.dumps(report, indent=2))
        replicas = rows[0]["replicas"] if rows else 0
        print(
            f"\n== {target}: {replicas} replicas, {args.prompts} system prompts x ~{args.system_tokens} tokens,"
            f" concurrency {rows[0]['concurrency'] if rows else 0}, {rows[0]['requests'] if rows else 0} requests,"
            f" max_tokens {args.max_tokens}"
        )
        print(table(rows), flush=True)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
