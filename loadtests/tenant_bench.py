"""Tenant benchmark: cluster-wide token budgets, fair queuing across tenants, priority classes.

    python -m loadtests.tenant_bench                          # all three, 4 replicas on 3 worker nodes (root)
    python -m loadtests.tenant_bench --scenarios flood,priority --phase-s 20
    python -m loadtests.tenant_bench --cluster 0 --replicas 2 --duration 30 --scenarios tpm   # local `serve run`

Each scenario deploys its own app (direct ingress, `routing: request`, the
simulated engine with `max_num_seqs` = the deployment's `max_ongoing_requests`,
so the engine's batch is the fair queue's running limit) with tenants under
`auth.tenants`, each with a `keys_file` written to a temp dir (the cluster's
nodes share this machine's filesystem, not its environment). Clients send the
tenants' keys, spread over one connection pool per worker node; a client
refused with 429/503 waits its `Retry-After` (at most --max-retry-after-s)
and sends the next request.

Scenarios:
  tpm       one tenant with `tokens_per_minute` L (--tpm) and no other limit;
            --tpm-workers closed-loop clients far above L for --duration s,
            non-streaming chat, max_tokens 50, ignore_eos. Tokens served are
            each 200's usage.total_tokens, by completion time. Printed: the
            first 60 s (the bucket starts full: about 2 x L), tokens per
            minute from 60 s to the end against L (target: within 10%),
            200s vs 429s, and the spread over replicas (x-serving-replica).
  flood     four equal tenants (normal priority), --max-ongoing running and
            --max-queued waiting per replica. Victims' TTFT (time to the
            first content chunk of a streamed chat) with 3 victims x
            --victim-streams closed-loop streams alone, then while tenant
            `flood` runs --flood-factor x the cluster's running capacity in
            streams (target: p99 within 1.5x of unloaded). Then saturation
            fairness: the four tenants with the same number of streams (half
            the capacity each), then one of them with 4x that; printed, each
            tenant's completion tokens/s and Jain's index (sum x)^2 / (n sum
            x^2) (target >= 0.9; served in proportion to concurrency, as a
            FIFO would, the skewed run would give about 0.64).
  priority  tenant `online` (priority high) alone, then while tenant `batch`
            (priority low) runs --batch-factor x (running + queued capacity)
            streams, so some of batch's are shed. Printed: online's TTFT
            p50/p99 and the p99 ratio, batch's 503s, online's 503s (should be 0).

A request admitted behind a full batch waits for a running one to end (no
preemption), so a victim's TTFT under saturation is at least about one
request's time / (2 x max_ongoing) above unloaded.

Beside every TTFT p50/p99: the same requests' wait in the serving replica's
fair queue, as its response header `x-serving-admission-ms` states it (server
side, 0 when admitted at once), and their TTFT less that wait (the rest: the
engine, the network, and the client's own event loop on this machine's cores).
The flood and the batch class send from a client process of their own
(`run_split`), the measured tenants from this one.

Percentiles are nearest-rank. Prints one table per scenario, then one JSON
line with every figure (also written to --out if given). With --cluster N
(root; tests/cluster.py) a head and N worker nodes in network namespaces;
--replicas must be >= N (every worker node's address must answer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import secrets
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.routing_bench import ClusterStack, LocalStack, serve_config, sim_model
from loadtests.sse import aiter_events
from serving.api.forwarded import REPLICA_HEADER
from serving.api.openai_serving import ADMISSION_HEADER

MODEL = "bench-llm"
APP = "tenant-bench"
SCENARIOS = ("tpm", "flood", "priority")
VICTIMS = ("victim-a", "victim-b", "victim-c")
TPM_MAX_TOKENS = 50
# The tpm scenario's replicas have room for every worker: only the budget limits it.
TPM_MAX_ONGOING, TPM_MAX_QUEUED = 8, 16


def engine_args(max_ongoing: int, decode_s_per_token: float = 0.02) -> dict[str, Any]:
    return {
        "max_model_len": 2048,
        "ttft_base_s": 0.02,
        "prefill_s_per_token": 0.0002,
        "decode_s_per_token": decode_s_per_token,
        "decode_batch_slowdown": 0.02,
        "max_num_seqs": max_ongoing,  # the engine's batch is the fair queue's running limit
    }


# -- config ----------------------------------------------------------------------------------


class Keys:
    """One key file per tenant in a temp dir on the shared filesystem (removed at the end)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tenant-bench-keys-"))
        self.keys: dict[str, str] = {}

    def file_of(self, tenant: str) -> str:
        if tenant not in self.keys:
            self.keys[tenant] = f"tb-{tenant}-{secrets.token_hex(16)}"
            (self.dir / f"{tenant}.keys").write_text(self.keys[tenant] + "\n")
        return str(self.dir / f"{tenant}.keys")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def app_config(
    stack, args, app: str, tenants: list[dict[str, Any]], keys: Keys, max_ongoing: int, max_queued: int
) -> dict[str, Any]:
    """routing_bench's simulated model and direct-ingress config (request routing), with our engine,
    queue bounds and tenants (keys, not an open API)."""
    model = sim_model("prefix_aware", keys.dir, args.replicas)  # request placement reads its router_* settings
    model.pop("env", None)
    model["engine"] = "simulator"
    model["engine_args"] = engine_args(max_ongoing, args.decode_s_per_token)
    model["deployment"].update(
        max_ongoing_requests=max_ongoing,
        max_queued_requests=max_queued,
        autoscaling={
            "min_replicas": args.replicas,
            "max_replicas": args.replicas,
            "target_ongoing_requests": max_ongoing,
        },
    )
    if stack.nodes > 1:
        model["deployment"]["max_replicas_per_node"] = -(-args.replicas // stack.nodes)
    config = serve_config(model, args.port, "request", host=stack.host)
    application = config["applications"][0]
    application["name"] = app
    application["args"]["auth"] = {"tenants": [{**t, "keys_file": keys.file_of(t["name"])} for t in tenants]}
    return config


_REGISTRY = """
import json, ray
ray.init(namespace="serving", log_to_driver=False, logging_level="ERROR")
from serving.deployments.registry import registry_name
actor = ray.get_actor(registry_name(%r), namespace="serving")
print(json.dumps(ray.get(actor.exchange.remote())))
"""


def wait_for_replicas(stack, app: str, n: int, timeout_s: float = 300) -> dict[str, str]:
    """Until the app's routing registry lists `n` ready replicas of the model: replica id -> node."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = stack.python(_REGISTRY % app)
        if done.returncode == 0:
            entries = json.loads(done.stdout.strip().splitlines()[-1])
            ready = {
                e["replica_id"]: e.get("node", "") for e in entries if e["model"] == MODEL and e["state"] == "ready"
            }
            if len(ready) >= n:
                time.sleep(1.0)  # a few refreshes: every entry point's table lists them all
                return ready
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the registry never listed {n} ready replicas: {done.stdout[-500:]} {done.stderr[-2000:]}"
            )
        time.sleep(2)


# -- load ------------------------------------------------------------------------------------


@dataclass
class Group:
    """`streams` closed-loop clients of one tenant, from `start_s` into the phase to its end."""

    tenant: str
    streams: int
    stream: bool = True
    max_tokens: int = 32
    start_s: float = 0.0


@dataclass
class Done:
    """One request: status (0: no HTTP answer; -1: an error event after the stream began), times in
    seconds since the phase's start, TTFT (to the first content chunk), tokens (a stream's completion
    tokens, a whole body's total_tokens), the replica that served it, and its wait in that replica's
    fair queue in ms (`x-serving-admission-ms`; None without the header)."""

    tenant: str
    status: int
    sent: float
    ended: float
    ttft: float | None = None
    tokens: int = 0
    replica: str | None = None
    retry_after: float = 1.0
    error: str = ""
    admission_ms: float | None = None


def _admission_ms(headers) -> float | None:
    value = headers.get(ADMISSION_HEADER)
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _retry_after(headers) -> float:
    try:
        return max(0.0, float(headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


async def one_request(client, key: str, g: Group, text: str, t0: float, timeout_s: float) -> Done:
    import httpx

    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": text}],
        "max_tokens": g.max_tokens,
        "ignore_eos": True,
        "stream": g.stream,
    }
    if g.stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {key}"}
    sent = time.perf_counter()
    done = Done(g.tenant, 0, sent - t0, 0.0)
    try:
        if not g.stream:
            r = await client.post("/v1/chat/completions", json=body, headers=headers)
            done.status, done.replica = r.status_code, r.headers.get(REPLICA_HEADER)
            done.admission_ms = _admission_ms(r.headers)
            if r.status_code == 200:
                done.tokens = int(r.json()["usage"]["total_tokens"])
            else:
                done.retry_after, done.error = _retry_after(r.headers), r.text[:200]
        else:
            async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                done.status, done.replica = r.status_code, r.headers.get(REPLICA_HEADER)
                done.admission_ms = _admission_ms(r.headers)
                if r.status_code != 200:
                    done.retry_after = _retry_after(r.headers)
                    done.error = (await r.aread())[:200].decode(errors="replace")
                else:
                    async for event in aiter_events(r.aiter_bytes()):
                        if event.done:
                            continue
                        raw = event.data
                        # Decode only what is needed: until the first content, then the usage or an error.
                        if done.ttft is None and b'"content"' in raw:
                            choices = event.json().get("choices") or [{}]
                            if choices[0].get("delta", {}).get("content"):
                                done.ttft = time.perf_counter() - sent
                        if b'"usage"' in raw or b'"error"' in raw:
                            data = event.json()
                            if data.get("error"):
                                done.status, done.error = -1, str(data["error"])[:200]
                            elif data.get("usage"):
                                done.tokens = int(data["usage"]["completion_tokens"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        if done.status == 200:
            done.status = -1
        done.error = f"{type(exc).__name__}: {exc}"[:200]
    done.ended = time.perf_counter() - t0
    return done


async def run_phase(
    urls: list[str], keys: Keys, groups: list[Group], until_s: float, args, start_at: float | None = None
) -> list[Done]:
    """Every group's clients, each spread over the URLs (one pool per URL), sending until `until_s`;
    requests in flight then may end within --drain-s, the rest are cancelled (not counted).
    `start_at`: the wall-clock time (time.time()) to begin at, shared with a load process (`run_split`)."""
    import httpx

    slots = []
    for g in groups:
        for w in range(g.streams):
            slots.append((g, w, len(slots) % len(urls)))
    per_url = Counter(u for _, _, u in slots)
    results: list[Done] = []
    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for i, url in enumerate(urls):
            n = per_url[i] + 2  # a connection per client: no request waits for one here
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            timeout = httpx.Timeout(args.timeout_s, pool=None)
            clients.append(
                await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits))
            )
        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.time()))
        t0 = time.perf_counter()
        deadline = t0 + until_s

        async def worker(g: Group, w: int, client) -> None:
            # Ramp a group's clients over its first second: no synchronized burst.
            await asyncio.sleep(g.start_s + w / max(1, g.streams))
            k = 0
            while time.perf_counter() < deadline:
                text = f"Turn {k} of {g.tenant} client {w}: tell me about item {(k * 7919 + w * 104729) % 100003}."
                done = await one_request(client, keys.keys[g.tenant], g, text, t0, args.timeout_s)
                results.append(done)
                k += 1
                if done.status != 200:
                    wait = min(done.retry_after, args.max_retry_after_s) if done.status in (429, 503) else 0.5
                    await asyncio.sleep(max(0.0, min(wait, deadline - time.perf_counter())))

        tasks = [asyncio.create_task(worker(g, w, clients[u])) for g, w, u in slots]
        finished, pending = await asyncio.wait(tasks, timeout=until_s + args.drain_s)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for t in finished:
            if t.exception() is not None:
                raise t.exception()  # a bug of ours, not the server's
    return results


def _load_process(urls: list[str], keys: Keys, groups: list[Group], until_s: float, args, start_at: float, out) -> None:
    late = time.time() - start_at  # > 0: it could not start with the measured groups
    out.send((late, asyncio.run(run_phase(urls, keys, groups, until_s, args, start_at))))
    out.close()


def run_split(
    urls: list[str], keys: Keys, load: list[Group], measured: list[Group], until_s: float, args
) -> list[Done]:
    """`run_phase` with the load (a flood, a batch class) in a client process of its own, and the measured
    groups in this one, from the same moment. In one process, the load's hundreds of streams kept that
    process's event loop busy (a whole core, measured), and the measured clients' first chunks waited in
    it: their TTFT then measured our client, not the server. Two processes, as two clients would be."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    start_at = time.time() + args.spawn_s  # the load process imports and connects before then
    child = ctx.Process(target=_load_process, args=(urls, keys, load, until_s, args, start_at, send), daemon=True)
    child.start()
    send.close()
    try:
        measured_done = asyncio.run(run_phase(urls, keys, measured, until_s, args, start_at))
        if not receive.poll(until_s + args.drain_s + args.spawn_s + 30):
            raise RuntimeError("the load process sent no results")
        try:
            late, load_done = receive.recv()
        except EOFError:
            raise RuntimeError(f"the load process ended without results (exit code {child.exitcode})") from None
        if late > 0:
            print(f"  warning: the load process started {late:.1f} s late (raise --spawn-s)", flush=True)
    finally:
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    return load_done + measured_done


# -- figures -----------------------------------------------------------------------------------


def nearest_rank(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least q% of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def jain(xs: list[float]) -> float | None:
    total = sum(xs)
    squares = sum(x * x for x in xs)
    return total * total / (len(xs) * squares) if xs and squares else None


def ttft_stats(done: list[Done]) -> dict[str, Any]:
    """TTFT percentiles of the requests that had a first token, and of the same requests (those with the
    header) their wait in the serving replica's fair queue and their TTFT less that wait."""
    timed = [d for d in done if d.status == 200 and d.ttft is not None]
    ttfts = [d.ttft for d in timed if d.ttft is not None]
    stated = [(d.ttft, d.admission_ms / 1000) for d in timed if d.ttft is not None and d.admission_ms is not None]
    waits = [w for _, w in stated]
    rest = [t - w for t, w in stated]
    return {
        "n": len(ttfts),
        "p50_s": nearest_rank(ttfts, 50),
        "p99_s": nearest_rank(ttfts, 99),
        "status": status_counts(done),
        "admission_n": len(waits),  # of n: responses that stated their wait (x-serving-admission-ms)
        # the requests that waited 50 ms or more in our queue: (sent, s since the phase's start; wait, ms)
        "waited": sorted((round(d.sent, 2), d.admission_ms) for d in timed if (d.admission_ms or 0) >= 50),
        "admission_p50_s": nearest_rank(waits, 50),
        "admission_p99_s": nearest_rank(waits, 99),
        "ttft_less_admission_p50_s": nearest_rank(rest, 50),
        "ttft_less_admission_p99_s": nearest_rank(rest, 99),
    }


def status_counts(done: list[Done]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(d.status for d in done).items())}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def errors_of(done: list[Done], n: int = 3) -> list[str]:
    return [f"{d.tenant} {d.status}: {d.error}" for d in done if d.status not in (200, 429, 503)][:n]


def ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.0f}ms"


def ms1(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.1f}ms"


ADMISSION_TITLES = ("our queue's wait p50 / p99", "TTFT less it p50 / p99")
ADMISSION_COLUMNS = "".join(f"   {t}" for t in ADMISSION_TITLES)


def admission_columns(s: dict[str, Any]) -> str:
    """The columns beside a TTFT p50/p99 (ADMISSION_COLUMNS): the same requests' wait in the serving replica's
    fair queue (server side) and their TTFT less it; `(k of n)` when only k of the n responses stated it."""
    pairs = (
        f"{ms1(s['admission_p50_s'])} / {ms1(s['admission_p99_s'])}",
        f"{ms(s['ttft_less_admission_p50_s'])} / {ms(s['ttft_less_admission_p99_s'])}",
    )
    cols = "".join(f"   {pair:>{len(title)}}" for pair, title in zip(pairs, ADMISSION_TITLES, strict=True))
    if s["admission_n"] != s["n"]:
        cols += f"  ({s['admission_n']} of {s['n']})"
    return cols


def fx(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


# -- scenarios -------------------------------------------------------------------------------


def scenario_tpm(stack, args, keys: Keys) -> dict[str, Any]:
    limit = args.tpm
    tenants = [{"name": "metered", "tokens_per_minute": limit}]
    config = app_config(stack, args, f"{APP}-tpm", tenants, keys, TPM_MAX_ONGOING, TPM_MAX_QUEUED)
    with stack.serving(config, "tpm") as urls:
        replicas = wait_for_replicas(stack, f"{APP}-tpm", args.replicas)
        group = Group("metered", args.tpm_workers, stream=False, max_tokens=TPM_MAX_TOKENS)
        done = asyncio.run(run_phase(urls, keys, [group], args.duration, args))
    ok = [d for d in done if d.status == 200 and d.ended <= args.duration]
    first_s = min(60.0, args.duration)
    first = sum(d.tokens for d in ok if d.ended < first_s)
    steady_s = args.duration - 60.0
    steady = sum(d.tokens for d in ok if d.ended >= 60.0)
    steady_per_min = steady / steady_s * 60 if steady_s > 0 else None
    bucket_s = 15.0
    buckets = [0] * math.ceil(args.duration / bucket_s)
    for d in ok:
        buckets[min(len(buckets) - 1, int(d.ended // bucket_s))] += d.tokens
    per_replica: dict[str, dict[str, Any]] = defaultdict(lambda: {"requests": 0, "tokens": 0})
    for d in ok:
        row = per_replica[d.replica or "?"]
        row["requests"] += 1
        row["tokens"] += d.tokens
    for rid, row in per_replica.items():
        row["node"] = replicas.get(rid, "")
    tokens = [r["tokens"] for r in per_replica.values()]
    return {
        "tokens_per_minute_limit": limit,
        "workers": args.tpm_workers,
        "duration_s": args.duration,
        "first_window_s": first_s,
        "first_window_tokens": first,
        # a full bucket plus the window's refill
        "first_window_expected": limit + limit * first_s / 60,
        "steady_tokens_per_min": steady_per_min,
        "steady_ratio": ratio(steady_per_min, limit),
        "tokens_per_min_by_15s": [b * 60 / bucket_s for b in buckets],
        "status": status_counts(done),
        "per_replica": dict(per_replica),
        "replicas_serving": len(per_replica),
        "max_over_mean_tokens": (max(tokens) / (sum(tokens) / len(tokens))) if tokens and sum(tokens) else None,
        "errors": errors_of(done),
    }


def print_tpm(r: dict[str, Any], stack, args) -> None:
    limit = r["tokens_per_minute_limit"]
    print(
        f"\n== tpm: tokens_per_minute {limit}, {args.replicas} replicas on {stack.nodes} node(s),"
        f" {r['workers']} closed-loop clients, {r['duration_s']:g} s, non-streaming, max_tokens {TPM_MAX_TOKENS}"
    )
    print(
        f"first {r['first_window_s']:g} s   {r['first_window_tokens']:>8} tokens"
        f"  ({r['first_window_tokens'] / limit:.2f} x L; a full bucket + the refill: {r['first_window_expected'] / limit:.2f} x L)"
    )
    if r["steady_tokens_per_min"] is None:
        print("steady        n/a (needs --duration > 60)")
    else:
        print(
            f"steady 60-{r['duration_s']:g} s {r['steady_tokens_per_min']:>8.0f} tokens/min"
            f"  ({r['steady_ratio']:.3f} x L; target within 10%)"
        )
    print("tokens/min by 15 s:", " ".join(f"{x:.0f}" for x in r["tokens_per_min_by_15s"]))
    s = r["status"]
    other = sum(v for k, v in s.items() if k not in ("200", "429"))
    print(f"requests      200: {s.get('200', 0)}  429: {s.get('429', 0)}  other: {other}")
    print(f"per replica   ({r['replicas_serving']} serving, max/mean tokens {fx(r['max_over_mean_tokens'])})")
    for rid, row in sorted(r["per_replica"].items(), key=lambda kv: -kv[1]["tokens"]):
        node = f" on node {row['node'][:8]}" if row.get("node") else ""
        print(f"  {rid}{node}: {row['requests']} requests, {row['tokens']} tokens")
    for e in r["errors"]:
        print(f"  error: {e}")


def scenario_flood(stack, args, keys: Keys) -> dict[str, Any]:
    tenants = [{"name": n} for n in (*VICTIMS, "flood")]
    app = f"{APP}-flood"
    config = app_config(stack, args, app, tenants, keys, args.max_ongoing, args.max_queued)
    capacity = args.replicas * args.max_ongoing
    queued = args.replicas * args.max_queued
    flood_streams = args.flood_factor * capacity
    fair_streams = max(1, capacity // 2)  # 4 tenants x half the capacity: each more than its share
    phase, ramp, warm = args.phase_s, args.ramp_s, args.warm_s
    mt = args.max_tokens
    out: dict[str, Any] = {
        "capacity_running": capacity,
        "capacity_queued": queued,
        "flood_streams": flood_streams,
        "victim_streams": args.victim_streams,
        "fair_streams": fair_streams,
        "phase_s": phase,
    }

    def victims(start: float = 0.0) -> list[Group]:
        return [Group(v, args.victim_streams, max_tokens=mt, start_s=start) for v in VICTIMS]

    if len(VICTIMS) * args.victim_streams > capacity // 2:
        print(
            f"[flood] note: the victims' {len(VICTIMS) * args.victim_streams} streams are more than half the"
            f" running capacity ({capacity}): 'alone' is not unloaded",
            flush=True,
        )
    with stack.serving(config, "flood") as urls:
        wait_for_replicas(stack, app, args.replicas)
        warmup = [Group(t["name"], 1, max_tokens=mt) for t in tenants]
        asyncio.run(run_phase(urls, keys, warmup, args.warmup_s, args))
        print("[flood] victims alone", flush=True)
        alone = asyncio.run(run_phase(urls, keys, victims(), phase, args))
        print(f"[flood] victims with {flood_streams} flood streams", flush=True)
        flooded = run_split(
            urls, keys, [Group("flood", flood_streams, max_tokens=mt)], victims(ramp), ramp + phase, args
        )
        fairness = {}
        for name, counts in (
            ("equal", {t["name"]: fair_streams for t in tenants}),
            ("skewed", {**{v: fair_streams for v in VICTIMS}, "flood": 4 * fair_streams}),
        ):
            print(f"[flood] fairness, {name}: {counts}", flush=True)
            groups = [Group(t, n, max_tokens=mt) for t, n in counts.items()]
            done = asyncio.run(run_phase(urls, keys, groups, warm + phase, args))
            window = [d for d in done if d.status == 200 and warm <= d.ended <= warm + phase]
            rates = {t: sum(d.tokens for d in window if d.tenant == t) / phase for t in counts}
            fairness[name] = {
                "streams": counts,
                "tokens_per_s": rates,
                "jain": jain(list(rates.values())),
                # served in proportion to concurrency (a FIFO): the index that would give
                "jain_if_proportional": jain([float(n) for n in counts.values()]),
                "status": {t: status_counts([d for d in done if d.tenant == t]) for t in counts},
                "errors": errors_of(done),
            }
    victims_alone = [d for d in alone if d.tenant in VICTIMS]
    victims_flooded = [d for d in flooded if d.tenant in VICTIMS]
    out["victims_alone"] = ttft_stats(victims_alone)
    out["victims_flooded"] = ttft_stats(victims_flooded)
    out["victims_by_tenant"] = {
        v: {
            "alone": ttft_stats([d for d in alone if d.tenant == v]),
            "flooded": ttft_stats([d for d in flooded if d.tenant == v]),
        }
        for v in VICTIMS
    }
    out["p50_ratio"] = ratio(out["victims_flooded"]["p50_s"], out["victims_alone"]["p50_s"])
    out["p99_ratio"] = ratio(out["victims_flooded"]["p99_s"], out["victims_alone"]["p99_s"])
    out["flood_status"] = status_counts([d for d in flooded if d.tenant == "flood"])
    out["fairness"] = fairness
    out["errors"] = errors_of(alone + flooded)
    return out


def print_flood(r: dict[str, Any], stack, args) -> None:
    print(
        f"\n== flood: 4 tenants of weight 1, {args.replicas} replicas on {stack.nodes} node(s):"
        f" {r['capacity_running']} running + {r['capacity_queued']} queued; streamed chat, max_tokens"
        f" {args.max_tokens}; phases of {r['phase_s']:g} s"
    )
    print(
        f"victims' TTFT ({len(VICTIMS)} x {r['victim_streams']} streams)   p50      p99       n   503"
        + ADMISSION_COLUMNS
    )
    for label, key in (("alone", "victims_alone"), (f"flood x{r['flood_streams']}", "victims_flooded")):
        s = r[key]
        print(
            f"  {label:<30} {ms(s['p50_s']):>7}  {ms(s['p99_s']):>7}  {s['n']:>6}  {s['status'].get('503', 0):>4}"
            + admission_columns(s)
        )
    print(f"  {'ratio (target p99 <= 1.5x)':<30} {fx(r['p50_ratio']):>6}x  {fx(r['p99_ratio']):>6}x")
    fs = r["flood_status"]
    print(f"  flood's requests: 200: {fs.get('200', 0)}, 503: {fs.get('503', 0)}")
    print("saturation fairness (completion tokens/s)                      Jain  (proportional)")
    for name, f in r["fairness"].items():
        rates = "  ".join(f"{t}: {x:.0f}" for t, x in f["tokens_per_s"].items())
        shed = sum(s.get("503", 0) for s in f["status"].values())
        print(
            f"  {name:<7} {rates:<54} {fx(f['jain'], 3):>6}  ({fx(f['jain_if_proportional'], 3)})"
            f"  streams {list(f['streams'].values())}, 503s {shed}"
        )
    for e in r["errors"] + [e for f in r["fairness"].values() for e in f["errors"]]:
        print(f"  error: {e}")


def scenario_priority(stack, args, keys: Keys) -> dict[str, Any]:
    tenants = [{"name": "online", "priority": "high"}, {"name": "batch", "priority": "low"}]
    app = f"{APP}-priority"
    config = app_config(stack, args, app, tenants, keys, args.max_ongoing, args.max_queued)
    capacity = args.replicas * args.max_ongoing
    queued = args.replicas * args.max_queued
    online_streams = args.online_streams or max(2, capacity // 4)
    batch_streams = math.ceil(args.batch_factor * (capacity + queued))
    mt = args.max_tokens
    with stack.serving(config, "priority") as urls:
        wait_for_replicas(stack, app, args.replicas)
        asyncio.run(
            run_phase(
                urls, keys, [Group("online", 1, max_tokens=mt), Group("batch", 1, max_tokens=mt)], args.warmup_s, args
            )
        )
        print("[priority] online alone", flush=True)
        alone = asyncio.run(run_phase(urls, keys, [Group("online", online_streams, max_tokens=mt)], args.phase_s, args))
        print(f"[priority] online with {batch_streams} batch streams", flush=True)
        mixed = run_split(
            urls,
            keys,
            [Group("batch", batch_streams, max_tokens=mt)],
            [Group("online", online_streams, max_tokens=mt, start_s=args.ramp_s)],
            args.ramp_s + args.phase_s,
            args,
        )
    online_mixed = [d for d in mixed if d.tenant == "online"]
    batch = [d for d in mixed if d.tenant == "batch"]
    out = {
        "capacity_running": capacity,
        "capacity_queued": queued,
        "online_streams": online_streams,
        "batch_streams": batch_streams,
        "phase_s": args.phase_s,
        "online_alone": ttft_stats(alone),
        "online_with_batch": ttft_stats(online_mixed),
        "batch": ttft_stats(batch),
        "online_503": sum(1 for d in online_mixed if d.status == 503),
        "batch_503": sum(1 for d in batch if d.status == 503),
        "errors": errors_of(alone + mixed),
    }
    out["p50_ratio"] = ratio(out["online_with_batch"]["p50_s"], out["online_alone"]["p50_s"])
    out["p99_ratio"] = ratio(out["online_with_batch"]["p99_s"], out["online_alone"]["p99_s"])
    return out


def print_priority(r: dict[str, Any], stack, args) -> None:
    print(
        f"\n== priority: online (high, {r['online_streams']} streams) vs batch (low, {r['batch_streams']} streams),"
        f" {args.replicas} replicas on {stack.nodes} node(s): {r['capacity_running']} running +"
        f" {r['capacity_queued']} queued; phases of {r['phase_s']:g} s"
    )
    print("online's TTFT                  p50      p99       n   503" + ADMISSION_COLUMNS)
    for label, key in (("alone", "online_alone"), ("with batch", "online_with_batch")):
        s = r[key]
        print(
            f"  {label:<26} {ms(s['p50_s']):>7}  {ms(s['p99_s']):>7}  {s['n']:>6}  {s['status'].get('503', 0):>4}"
            + admission_columns(s)
        )
    print(f"  {'ratio':<26} {fx(r['p50_ratio']):>6}x  {fx(r['p99_ratio']):>6}x")
    b = r["batch"]
    print(
        f"  batch: {b['status'].get('200', 0)} served (TTFT p50 {ms(b['p50_s'])}, p99 {ms(b['p99_s'])};"
        f" queue wait p50 {ms1(b['admission_p50_s'])}, p99 {ms1(b['admission_p99_s'])}),"
        f" {r['batch_503']} shed (503); online shed: {r['online_503']} (should be 0)"
    )
    for e in r["errors"]:
        print(f"  error: {e}")


RUN = {
    "tpm": (scenario_tpm, print_tpm),
    "flood": (scenario_flood, print_flood),
    "priority": (scenario_priority, print_priority),
}


def _clean(x: Any) -> Any:
    """NaN/inf to null: the JSON line is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.tenant_bench",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    p.add_argument(
        "--cluster",
        type=int,
        default=3,
        metavar="NODES",
        help="worker nodes of the multi-node harness (tests/cluster.py, root); 0: `serve run` on this machine",
    )
    p.add_argument("--replicas", type=int, default=4, help="replicas of the model (max_replicas_per_node: ceil(R/N))")
    p.add_argument("--port", type=int, default=8050, help="the direct ingress's port (Serve's proxy: port + 1)")
    p.add_argument("--tpm", type=int, default=20000, help="tpm: the tenant's tokens_per_minute")
    p.add_argument("--duration", type=float, default=150, help="tpm: seconds of load")
    p.add_argument("--tpm-workers", type=int, default=16, help="tpm: closed-loop clients")
    p.add_argument(
        "--max-ongoing", type=int, default=4, help="flood, priority: max_ongoing_requests per replica (= max_num_seqs)"
    )
    p.add_argument("--max-queued", type=int, default=8, help="flood, priority: max_queued_requests per replica")
    p.add_argument("--max-tokens", type=int, default=32, help="flood, priority: max_tokens of each streamed chat")
    p.add_argument("--victim-streams", type=int, default=2, help="flood: closed-loop streams per victim tenant")
    p.add_argument(
        "--flood-factor", type=int, default=4, help="flood: the flood's streams, x the cluster's max_ongoing total"
    )
    p.add_argument(
        "--online-streams",
        type=int,
        default=0,
        help="priority: online's streams (0: a quarter of the running capacity, >= 2)",
    )
    p.add_argument(
        "--batch-factor",
        type=float,
        default=1.5,
        help="priority: batch's streams, x the cluster's running + queued capacity (> 1: some are shed)",
    )
    p.add_argument("--phase-s", type=float, default=30, help="flood, priority: seconds measured per phase")
    p.add_argument("--ramp-s", type=float, default=5, help="the flood / batch alone before the measured tenants start")
    p.add_argument("--warm-s", type=float, default=5, help="fairness runs: seconds before the throughput window")
    p.add_argument("--warmup-s", type=float, default=3, help="unmeasured requests of every tenant after each deploy")
    p.add_argument("--drain-s", type=float, default=20, help="how long requests in flight at a phase's end may finish")
    p.add_argument(
        "--decode-s-per-token",
        type=float,
        default=0.02,
        help="the simulated engine's time per output token (at batch 1); longer: fewer chunks per second for"
        " the same places taken, so the 2 cores' client and replicas keep up with a saturated queue",
    )
    p.add_argument(
        "--spawn-s", type=float, default=5, help="time given to the load's client process to start (flood, priority)"
    )
    p.add_argument("--max-retry-after-s", type=float, default=5, help="the longest Retry-After a client honours")
    p.add_argument("--timeout-s", type=float, default=120, help="client timeout per request")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = p.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    if args.cluster and args.replicas < args.cluster:
        p.error("--replicas must be >= --cluster: every worker node's address must have a replica behind it")
    if min(args.replicas, args.max_ongoing, args.max_queued, args.tpm_workers, args.victim_streams) < 1:
        p.error("--replicas, --max-ongoing, --max-queued, --tpm-workers and --victim-streams must be >= 1")
    if args.tpm < TPM_MAX_TOKENS + 100:
        p.error(f"--tpm must leave room for one request (about {TPM_MAX_TOKENS + 30} tokens)")

    report: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    keys = Keys()
    log_dir = Path(tempfile.mkdtemp(prefix="tenant-bench-logs-"))
    stack = ClusterStack(args.cluster, args.port) if args.cluster else LocalStack(args.port, log_dir)
    t_start = time.monotonic()
    try:
        with stack:
            for name in scenarios:
                run, show = RUN[name]
                print(f"[{name}] deploying", flush=True)
                t0 = time.monotonic()
                result = run(stack, args, keys)
                result["wall_s"] = time.monotonic() - t0
                report[name] = result
                show(result, stack, args)
                print(f"({name}: {result['wall_s']:.0f} s with its deploy)", flush=True)
    finally:
        keys.remove()
    report["wall_s"] = time.monotonic() - t_start
    if isinstance(stack, LocalStack):
        report["logs"] = str(log_dir)
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
    line = json.dumps(_clean(report), default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o))
    if args.out:
        args.out.write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
