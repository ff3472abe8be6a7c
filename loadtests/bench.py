"""Side-by-side streaming benchmark: our stack (from a config) against plain vLLM.

    python -m loadtests.bench --config configs/dev.yaml            # full run
    python -m loadtests.bench --concurrency 16 --duration 3        # quick look

Both servers run the same model with the same engine arguments, one after the
other on this machine, each warmed up at every concurrency before it is
measured. The workload is streaming chat, ~40-token prompts, a fixed number of
output tokens (`ignore_eos`). TTFT is taken on the client at the first chunk
with content; output tokens come from `usage`; ITL is each request's mean gap
per output token after the first ((last - first content) / (tokens - 1)).

On 2 cores the load generator shares the CPU with the server and runs swing by
tens of percent: compare the two columns of one run, and repeat (`--repeat`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from loadtests import cpu
from loadtests.servers import ROOT, PlainVLLMProcess, ServeProcess, engine_processes
from loadtests.sse import SSEReader

WORDS = (
    "the quick brown fox jumps over a lazy dog while platform engineers measure latency "
    "throughput queues replicas tokens prompts models servers clusters nodes caches routers"
).split()


@dataclass
class RequestResult:
    start: float
    end: float
    ttft: float | None
    itl: float | None
    tokens: int
    error: str | None = None


@dataclass
class LevelResult:
    concurrency: int
    duration_s: float
    requests: int
    errors: int
    output_tok_s: float
    req_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    error_samples: list[str] = field(default_factory=list)
    # the processes that used the most CPU in the measured window (% of one core)
    busiest_processes: list[dict] = field(default_factory=list)
    # machine-wide CPU in the window, % of one core: idle, and steal (a hypervisor's other guests)
    machine_cpu: dict = field(default_factory=dict)


def make_prompt(rng: random.Random, words: int = 30) -> str:
    # ~30 words render to ~40 tokens with the chat template on the tiny model.
    return " ".join(rng.choice(WORDS) for _ in range(words)) + f" {rng.randint(0, 10**6)}"


async def stream_chat(
    session: aiohttp.ClientSession, url: str, model: str, prompt: str, max_tokens: int
) -> RequestResult:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = last = None
    tokens = 0
    done = False
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                text = await resp.text()
                return RequestResult(start, time.perf_counter(), None, None, 0, f"HTTP {resp.status}: {text[:200]}")
            reader = SSEReader()
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                # Payloads are looked at as bytes: decoding every chunk's JSON would cost
                # the client CPU that the servers it measures share with it.
                for event in reader.feed(data):
                    payload = event.data
                    if event.done:
                        done = True
                        continue
                    if b'"error"' in payload[:10]:
                        return RequestResult(start, now, None, None, 0, payload.decode(errors="replace")[:200])
                    if b'"usage":{' in payload:
                        tokens = event.json()["usage"]["completion_tokens"]
                    if b'"content":"' in payload and b'"content":""' not in payload:
                        if first is None:
                            first = now
                        last = now
    except (TimeoutError, aiohttp.ClientError) as exc:
        return RequestResult(start, time.perf_counter(), None, None, 0, f"{type(exc).__name__}: {exc}")
    end = time.perf_counter()
    if not done:
        return RequestResult(start, end, None, None, tokens, "stream ended without [DONE]")
    ttft = (first - start) if first is not None else None
    itl = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return RequestResult(start, end, ttft, itl, tokens)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    idx = min(len(values) - 1, max(0, int(round(q / 100 * (len(values) - 1)))))
    return values[idx]


async def run_level(
    url: str,
    model: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    max_tokens: int,
    seed: int,
    headers: dict | None = None,
) -> LevelResult:
    rng = random.Random(seed)
    results: list[RequestResult] = []
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    timeout = aiohttp.ClientTimeout(total=120)
    t_measure = time.perf_counter() + warmup_s
    t_stop = t_measure + duration_s

    cpu_window: list[dict] = []
    machine: dict = {}

    async def sample_cpu() -> None:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        before = await cpu.snapshot_in_child()
        await asyncio.sleep(max(0.0, t_stop - time.perf_counter()))
        after = await cpu.snapshot_in_child()
        cpu_window.extend(cpu.busiest(before, after))
        machine.update(cpu.machine_share(before, after))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def worker() -> None:
            while time.perf_counter() < t_stop:
                results.append(await stream_chat(session, url, model, make_prompt(rng), max_tokens))

        await asyncio.gather(sample_cpu(), *(worker() for _ in range(concurrency)))

    window = [r for r in results if r.start >= t_measure and r.end <= t_stop]
    ok = [r for r in window if r.error is None]
    # Tokens of every request that finished inside the window, over the window.
    finished_in_window = [r for r in results if t_measure <= r.end <= t_stop and r.error is None]
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731  (0.01 ms: ITL is ~1 ms at c=1)
    return LevelResult(
        concurrency=concurrency,
        duration_s=duration_s,
        requests=len(window),
        errors=len(window) - len(ok),
        output_tok_s=round(sum(r.tokens for r in finished_in_window) / duration_s, 1),
        req_s=round(len(finished_in_window) / duration_s, 2),
        ttft_p50_ms=ms(pct([r.ttft for r in ok if r.ttft is not None], 50)),
        ttft_p99_ms=ms(pct([r.ttft for r in ok if r.ttft is not None], 99)),
        itl_p50_ms=ms(pct([r.itl for r in ok if r.itl is not None], 50)),
        itl_p99_ms=ms(pct([r.itl for r in ok if r.itl is not None], 99)),
        error_samples=[r.error for r in window if r.error][:3],
        busiest_processes=cpu_window,
        machine_cpu=machine,
    )


async def run_server(
    url: str,
    model: str,
    levels: list[int],
    warmup_s: float,
    duration_s: float,
    max_tokens: int,
    api_key: str | None = None,
) -> list[LevelResult]:
    out = []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    for c in levels:
        res = await run_level(url, model, c, warmup_s, duration_s, max_tokens, seed=c, headers=headers)
        print(
            f"  c={c:<3} {res.output_tok_s:>8.1f} tok/s  ttft p50 {res.ttft_p50_ms} ms  itl p50 {res.itl_p50_ms} ms  errors {res.errors}",
            flush=True,
        )
        print(f"        machine: {res.machine_cpu}; cpu: {cpu.describe(res.busiest_processes)}", flush=True)
        out.append(res)
    return out


# -- servers ------------------------------------------------------------------------


def load_model_config(config_path: Path):
    from serving.config import is_our_app, parse_app_args
    from serving.engine.factory import check_serve_config

    data = check_serve_config(config_path)
    app = next(a for a in data["applications"] if is_our_app(a))
    cfg = parse_app_args(app["args"])
    return cfg, cfg.models[0]


def our_url_for(cfg) -> str:
    if cfg.ingress.mode == "direct":
        return f"http://127.0.0.1:{cfg.ingress.port}"
    raise SystemExit("bench: give --our-url for a proxy-mode config (the Serve proxy port)")


def start_ours(config_path: Path, url: str, log_dir: Path) -> ServeProcess:
    # Same session as the load generator, like plain vLLM (see servers.start_in_own_group).
    return ServeProcess(config_path, f"{url}/ready", log_dir / "ours.log").start()


def start_plain(model_cfg, port: int, log_dir: Path) -> PlainVLLMProcess:
    from serving.deployments.app import replica_env
    from serving.engine.factory import resolve_source

    return PlainVLLMProcess(
        resolve_source(model_cfg.source),
        model_cfg.id,
        model_cfg.engine_args,
        port,
        log_dir / "plain.log",
        env=replica_env(model_cfg),
    ).start()


# -- report -------------------------------------------------------------------------

COLUMNS = [
    ("output_tok_s", "tok/s"),
    ("req_s", "req/s"),
    ("ttft_p50_ms", "TTFT p50"),
    ("ttft_p99_ms", "TTFT p99"),
    ("itl_p50_ms", "ITL p50"),
    ("itl_p99_ms", "ITL p99"),
    ("errors", "errors"),
]


def ratio(a, b):
    return None if a is None or not b else round(a / b, 3)


def table(ours: list[dict], plain: list[dict]) -> str:
    lines = ["| conc | server | " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for o, p in zip(ours, plain, strict=False):
        for name, row in (("ours", o), ("plain vLLM", p)):
            lines.append(f"| {row['concurrency']} | {name} | " + " | ".join(str(row[k]) for k, _ in COLUMNS) + " |")
        lines.append(
            f"| {o['concurrency']} | **ratio ours/plain** | **{ratio(o['output_tok_s'], p['output_tok_s'])}** | "
            f"{ratio(o['req_s'], p['req_s'])} | {ratio(o['ttft_p50_ms'], p['ttft_p50_ms'])} | "
            f"{ratio(o['ttft_p99_ms'], p['ttft_p99_ms'])} | {ratio(o['itl_p50_ms'], p['itl_p50_ms'])} | "
            f"{ratio(o['itl_p99_ms'], p['itl_p99_ms'])} | |"
        )
    return "\n".join(lines)


def targets(ours: list[dict], plain: list[dict]) -> list[str]:
    """The issue's targets, checked on one run; returns the misses."""
    misses = []
    for o, p in zip(ours, plain, strict=False):
        c = o["concurrency"]
        if o["errors"]:
            misses.append(f"c={c}: {o['errors']} errors")
        if c >= 16 and (ratio(o["output_tok_s"], p["output_tok_s"]) or 0) < 0.90:
            misses.append(f"c={c}: tok/s ratio {ratio(o['output_tok_s'], p['output_tok_s'])} < 0.90")
        if (
            c == 1
            and o["ttft_p50_ms"] is not None
            and p["ttft_p50_ms"] is not None
            and o["ttft_p50_ms"] > p["ttft_p50_ms"] + 10
        ):
            misses.append(f"c=1: TTFT p50 {o['ttft_p50_ms']} > plain {p['ttft_p50_ms']} + 10 ms")
        if o["itl_p50_ms"] and p["itl_p50_ms"] and o["itl_p50_ms"] > 1.25 * p["itl_p50_ms"]:
            misses.append(f"c={c}: ITL p50 {o['itl_p50_ms']} > 1.25 x plain {p['itl_p50_ms']}")
    return misses


def chart(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, run in enumerate(runs):
        for name, rows, style in (("ours", run["ours"], "-o"), ("plain vLLM", run["plain"], "--s")):
            if not rows:
                continue
            xs = [r["concurrency"] for r in rows]
            label = f"{name} (run {i + 1})"
            axes[0].plot(xs, [r["output_tok_s"] for r in rows], style, label=label)
            axes[1].plot(xs, [r["ttft_p50_ms"] or 0 for r in rows], style, label=label)
            axes[2].plot(xs, [r["itl_p50_ms"] or 0 for r in rows], style, label=label)
    for ax, title in zip(axes, ("output tokens/s", "TTFT p50 (ms)", "ITL p50 (ms)"), strict=False):
        ax.set_title(title)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent streams")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


async def amain(args) -> int:
    config_path = Path(args.config)
    cfg, model_cfg = load_model_config(config_path)
    levels = [int(c) for c in args.concurrency.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before any load)
    strays = engine_processes()
    if strays and not (args.our_url and args.only == "ours"):
        msg = f"bench: vLLM engine processes already running ({[p.pid for p in strays]}): results would be skewed"
        if not args.allow_other_engines:
            print(msg + " (pass --allow-other-engines to run anyway)", file=sys.stderr)
            return 2
        print("WARNING: " + msg, file=sys.stderr)

    def background_load(label: str, run: dict) -> None:
        """What else uses the CPU before a server starts (a previous server still exiting?)."""
        busy, top = cpu.machine_busy(3.0, exclude={os.getpid()})
        run.setdefault("background_cpu_pct", {})[label] = busy
        print(
            f"before {label}: other processes used {busy}% of a core" + (f": {cpu.describe(top, 5)}" if top else ""),
            flush=True,
        )

    runs = []
    for rep in range(args.repeat):
        print(f"== run {rep + 1}/{args.repeat}", flush=True)
        run = {"ours": [], "plain": []}
        for side in ("ours", "plain"):
            if args.only not in ("both", side):
                continue
            background_load(side, run)
            if side == "ours":
                url = args.our_url or our_url_for(cfg)
                server = None if args.our_url else start_ours(config_path, url, out)
                key = args.api_key
            else:
                server = None if args.plain_url else start_plain(model_cfg, args.plain_port, out)
                url = args.plain_url or f"http://127.0.0.1:{args.plain_port}"
                key = None
            try:
                print(f"{'ours' if side == 'ours' else 'plain vLLM'}: {url}", flush=True)
                results = await run_server(
                    f"{url}/v1/chat/completions", model_cfg.id, levels, args.warmup, args.duration,
                    args.output_tokens, key,
                )  # fmt: skip
                run[side] = [asdict(r) for r in results]
            finally:
                if server:
                    server.stop()
        runs.append(run)

    result = {
        "config": str(config_path),
        "model": model_cfg.id,
        "output_tokens": args.output_tokens,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "runs": runs,
    }
    exit_code = 0
    for i, run in enumerate(runs):
        if run["ours"] and run["plain"]:
            print(f"\n### run {i + 1}\n" + table(run["ours"], run["plain"]))
            misses = targets(run["ours"], run["plain"])
            run["target_misses"] = misses
            print("targets: " + ("all met" if not misses else "; ".join(misses)))
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    chart(runs, out / "bench.png")
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'}")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=str(ROOT / "configs" / "dev.yaml"))
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up at each concurrency")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds at each concurrency")
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--only", choices=["both", "ours", "plain"], default="both")
    p.add_argument("--our-url", help="use an already running stack instead of starting the config")
    p.add_argument("--plain-url", help="use an already running plain vLLM server")
    p.add_argument("--plain-port", type=int, default=8600)
    p.add_argument("--allow-other-engines", action="store_true")
    p.add_argument("--api-key", default=None, help="sent to our stack when it has keys configured")
    p.add_argument("--out", default=str(ROOT / "loadtests" / "results" / "bench"))
    return asyncio.run(amain(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
