"""Embeddings throughput, side by side: our stack against plain vLLM's `/v1/embeddings` on the same model.

    python -m loadtests.embed_bench                          # builtin:tiny-embed, 1 / 16 inputs per request
    python -m loadtests.embed_bench --concurrency 8 --rounds 3 --duration 10

Both servers run at once (same model, same engine arguments, each started the
same way, in its own process group) and are measured in turn, alternating,
each warmed up before every window. Closed loop: `--concurrency` clients each
send a request, wait for its answer, send the next. A request carries
`--batch` inputs of ~`--words` random words each. Printed: inputs/s and
request latency p50 per server and window, and ours/plain per round (issue 17's
target: >= 0.9).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from pathlib import Path

import aiohttp

from loadtests.servers import ServeProcess, free_ports

WORDS = (
    "the quick brown fox jumps over a lazy dog while platform engineers measure latency "
    "throughput queues replicas tokens prompts models servers clusters nodes caches routers"
).split()
MODEL = "tiny-embed"
ENGINE_ARGS = {"dtype": "float32"}


def our_config(port: int, proxy_port: int) -> dict:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": proxy_port},
        "applications": [
            {
                "name": "embed",
                "route_prefix": "/",
                "import_path": "serving.deployments.app:build_app",
                "args": {
                    "ingress": {"mode": "direct", "host": "127.0.0.1", "port": port},
                    "auth": "open",
                    "models": [
                        {
                            "id": MODEL,
                            "source": "builtin:tiny-embed",
                            "task": "embed",
                            "kv_cache_gib": 1,
                            "engine_args": ENGINE_ARGS,
                        }
                    ],
                },
            }
        ],
    }


async def window(url: str, concurrency: int, seconds: float, batch: int, words: int, seed: int) -> tuple[float, float]:
    """(inputs/s, request latency p50 in ms) over `seconds` of closed-loop load."""
    rng = random.Random(seed)
    latencies: list[float] = []
    inputs = 0
    errors = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as http:

        async def client() -> None:
            nonlocal inputs, errors
            while time.monotonic() < deadline:
                body = {"model": MODEL, "input": [" ".join(rng.choices(WORDS, k=words)) for _ in range(batch)]}
                t0 = time.monotonic()
                async with http.post(f"{url}/v1/embeddings", json=body) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                latencies.append(time.monotonic() - t0)
                inputs += batch

        start = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.monotonic() - start
    if errors:
        raise SystemExit(f"{url}: {errors} errors")
    return inputs / elapsed, 1000 * statistics.median(latencies)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.embed_bench", description=__doc__.split("\n")[0])
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batches", default="1,16", help="inputs per request, one set of rounds each")
    p.add_argument("--words", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--log-dir", default="/tmp")
    args = p.parse_args(argv)

    from loadtests.servers import PlainVLLMProcess
    from serving.engine.factory import resolve_source

    ours_port, proxy_port, plain_port = free_ports(3)
    logs = Path(args.log_dir)
    ours = ServeProcess.from_dict(
        our_config(ours_port, proxy_port), f"http://127.0.0.1:{ours_port}/ready", logs / "embed-ours.log"
    )
    plain = PlainVLLMProcess(
        resolve_source("builtin:tiny-embed"),
        MODEL,
        ENGINE_ARGS,
        plain_port,
        logs / "embed-plain.log",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    urls = {"ours": f"http://127.0.0.1:{ours_port}", "plain": f"http://127.0.0.1:{plain_port}"}
    with ours, plain:
        print(f"servers up (ours {urls['ours']}, plain vLLM {urls['plain']}); concurrency {args.concurrency}")
        for batch in [int(b) for b in args.batches.split(",")]:
            print(f"\n{batch} input(s) of ~{args.words} words per request")
            print(f"{'round':>5}  {'ours in/s':>10} {'p50 ms':>8}  {'plain in/s':>10} {'p50 ms':>8}  ratio")
            ratios = []
            for r in range(args.rounds):
                got = {}
                order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
                for name in order:
                    asyncio.run(window(urls[name], args.concurrency, args.warmup, batch, args.words, seed=r))
                    got[name] = asyncio.run(
                        window(urls[name], args.concurrency, args.duration, batch, args.words, seed=100 + r)
                    )
                ratio = got["ours"][0] / got["plain"][0]
                ratios.append(ratio)
                print(
                    f"{r + 1:>5}  {got['ours'][0]:>10.1f} {got['ours'][1]:>8.1f}  "
                    f"{got['plain'][0]:>10.1f} {got['plain'][1]:>8.1f}  {ratio:.2f}"
                )
            print(f"ours/plain inputs/s, median of {len(ratios)} rounds: {statistics.median(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
