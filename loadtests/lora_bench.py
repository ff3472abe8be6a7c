"""LoRA adapter switching cost and the first request of an adapter not loaded yet, on the real engine.

    python -m loadtests.lora_bench                    # 16 streams; base / 1 / 4 / 16 adapters
    python -m loadtests.lora_bench --max-loras 16 --rounds 3 --duration 15

Two servers of our stack, started the same way (`serve run`, each in its own
process group), the tiny Llama in float32 on both: `base` serves no adapters
(vLLM without LoRA), `lora` serves a store of adapters built offline
(serving/models/tiny_lora.py), `--max-loras` per batch, all of them kept
loaded. Closed loop: `--concurrency` clients each send a chat request
(`--max-tokens` tokens, ignore_eos), wait for it, send the next; with k
adapters, client i asks for adapter i mod k. Windows alternate between the
scenarios, each warmed up first. Printed: completion tokens/s per scenario
and round, and each against the base server's in the same round.

Then, on the idle `lora` server: time to first token (streamed) of an adapter
never loaded (its load included), against one already loaded and the base
model, `--fresh` times each.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from loadtests.servers import ServeProcess, free_ports

MODEL = "tiny-llama"
ENGINE_ARGS = {"dtype": "float32", "max_model_len": 1024}


def config(port: int, proxy_port: int, lora: dict | None) -> dict:
    model: dict = {"id": MODEL, "source": "builtin:tiny-llama", "kv_cache_gib": 1, "engine_args": ENGINE_ARGS}
    if lora is not None:
        model["lora"] = lora
    return {
        "proxy_location": "Disabled",
        "http_options": {"host": "127.0.0.1", "port": proxy_port},
        "applications": [
            {
                "name": "lora" if lora else "base",
                "route_prefix": "/",
                "import_path": "serving.deployments.app:build_app",
                "args": {
                    "ingress": {"mode": "direct", "host": "127.0.0.1", "port": port},
                    "auth": "open",
                    "models": [model],
                },
            }
        ],
    }


async def window(url: str, models: list[str], concurrency: int, seconds: float, max_tokens: int) -> float:
    """Completion tokens/s over `seconds` of closed-loop load; client i asks for models[i % len(models)]."""
    tokens = 0
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:

        async def client(i: int) -> None:
            nonlocal tokens
            n = 0
            while time.monotonic() < deadline:
                body = {
                    "model": models[i % len(models)],
                    "messages": [{"role": "user", "content": f"client {i} request {n}: tell me a story"}],
                    "max_tokens": max_tokens,
                    "ignore_eos": True,
                }
                n += 1
                async with http.post(f"{url}/v1/chat/completions", json=body) as r:
                    data = await r.json()
                    if r.status != 200:
                        errors.append(str(data)[:200])
                        continue
                    tokens += data["usage"]["completion_tokens"]

        start = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        elapsed = time.monotonic() - start
    if errors:
        raise SystemExit(f"{url}: {len(errors)} errors, first: {errors[0]}")
    return tokens / elapsed


async def ttft(url: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "stream": True}
    async with aiohttp.ClientSession() as http:
        t0 = time.monotonic()
        async with http.post(f"{url}/v1/chat/completions", json=body) as r:
            if r.status != 200:
                raise SystemExit(f"{model}: {r.status} {await r.text()}")
            async for line in r.content:
                if line.startswith(b"data: {") and b'"content":"' in line and b'"content":""' not in line:
                    first = time.monotonic() - t0
                    break
            else:
                raise SystemExit(f"{model}: no token")
            await r.read()
    return 1000 * first


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.lora_bench", description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--adapters", default="1,4,16", help="distinct adapters per scenario")
    p.add_argument("--max-loras", type=int, default=4, help="adapters per engine batch (models[].lora.max_loras)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=4.0)
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--fresh", type=int, default=5, help="adapters never loaded, for the first-request TTFT")
    p.add_argument("--log-dir", default="/tmp")
    args = p.parse_args(argv)

    from serving.models.tiny_lora import ensure_tiny_lora

    counts = [int(k) for k in args.adapters.split(",")]
    most = max(counts)
    store = Path(tempfile.mkdtemp(prefix="lora-store-"))
    names = [f"a{i}" for i in range(most)] + [f"fresh{i}" for i in range(args.fresh)]
    for name in names:
        shutil.copytree(ensure_tiny_lora(name), store / name)
    lora = {"store": str(store), "max_loras": min(args.max_loras, most), "max_loaded": most + args.fresh, "max_rank": 8}
    base_port, lora_port, p1, p2 = free_ports(4)
    logs = Path(args.log_dir)
    base = ServeProcess.from_dict(
        config(base_port, p1, None), f"http://127.0.0.1:{base_port}/ready", logs / "lora-bench-base.log"
    )
    with_lora = ServeProcess.from_dict(
        config(lora_port, p2, lora), f"http://127.0.0.1:{lora_port}/ready", logs / "lora-bench-lora.log"
    )
    urls = {"base": f"http://127.0.0.1:{base_port}", "lora": f"http://127.0.0.1:{lora_port}"}
    scenarios: dict[str, tuple[str, list[str]]] = {"base server": (urls["base"], [MODEL])}
    scenarios["lora server, base model"] = (urls["lora"], [MODEL])
    for k in counts:
        scenarios[f"{k} adapter(s)"] = (urls["lora"], [f"{MODEL}:a{i}" for i in range(k)])
    try:
        with base, with_lora:
            print(
                f"servers up; {args.concurrency} streams x {args.max_tokens} tokens, max_loras {lora['max_loras']}, "
                f"{args.rounds} rounds of {args.duration:g} s (warm-up {args.warmup:g} s each)"
            )
            results: dict[str, list[float]] = {name: [] for name in scenarios}
            for r in range(args.rounds):
                order = list(scenarios) if r % 2 == 0 else list(reversed(scenarios))
                for name in order:
                    url, models = scenarios[name]
                    asyncio.run(window(url, models, args.concurrency, args.warmup, args.max_tokens))
                    results[name].append(
                        asyncio.run(window(url, models, args.concurrency, args.duration, args.max_tokens))
                    )
                print(f"round {r + 1}: " + ", ".join(f"{n} {results[n][-1]:.0f}" for n in scenarios))
            print(f"\n{'scenario':<26} {'tokens/s (rounds)':<26} {'vs base server, median of rounds'}")
            base_runs = results["base server"]
            for name, runs in results.items():
                ratios = [x / b for x, b in zip(runs, base_runs, strict=True)]
                print(f"{name:<26} {' / '.join(f'{x:.0f}' for x in runs):<26} {statistics.median(ratios):.2f}")

            print("\ntime to first token on the idle lora server, ms (median of the tries)")
            fresh = [asyncio.run(ttft(urls["lora"], f"{MODEL}:fresh{i}")) for i in range(args.fresh)]
            loaded = [asyncio.run(ttft(urls["lora"], f"{MODEL}:a0")) for _ in range(args.fresh)]
            plain = [asyncio.run(ttft(urls["lora"], MODEL)) for _ in range(args.fresh)]
            for name, xs in (("adapter not loaded", fresh), ("adapter loaded", loaded), ("base model", plain)):
                print(f"  {name:<20} {statistics.median(xs):7.1f}   ({', '.join(f'{x:.0f}' for x in xs)})")
    finally:
        shutil.rmtree(store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
