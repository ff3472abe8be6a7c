"""Placement model: the real request scheduler against replicas that are only LRU prefix caches.

    python -m loadtests.placement_model                          # 2 replicas as in the vLLM bench
    python -m loadtests.placement_model --replicas 8 --keys 8 --cache 5 --streams 24 \\
        --hit-s 0.82 --miss-s 1.72 --per-load 0.03               # the simulated 8-replica bench
    python -m loadtests.placement_model --compare-no-home        # with and without shared-key homes

Why: the routing benchmark on two real vLLM replicas takes minutes a run and
its prefix hit rate swings 0.86-0.92 from run to run, mostly with how the
replicas' random ids happen to split the 8 system prompts; a change to
placement can't be judged from a few such runs. This model runs the same
`Scheduler` and `EndpointTable` (serving/routing/scheduler.py) in virtual
time over dozens of seeds in seconds.

Model, deliberately small: `--streams` closed-loop clients, each bound to one
entry replica (as pooled connections are), each request one of `--keys`
system prompts drawn uniformly; every replica is an entry point with its own
table, and every `--refresh-s` each reports its load and placements to all
(the registry's exchange). A replica's prefix cache is an LRU of `--cache`
prompts: a request whose prompt is in it hits, else it misses and evicts the
least recently used. A request takes `--hit-s` or `--miss-s`, times
1 + `--per-load` x (the replica's other requests in flight). It counts hits by
request, not by token (a real hit still computes the request's own turn), so
its rates sit above vLLM's counters.

Not modelled: stale loads beyond the refresh, vLLM's block-level partial hits,
output lengths, client connection churn. It ranks policies; the benchmark
measures them.
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from serving.routing import scheduler as sched
from serving.routing.policy import PrefixAwarePolicy


@dataclass
class Result:
    hit_rate: float
    max_over_fair: float  # the busiest replica's requests over its fair share
    keys_on_two_or_more: int
    virtual_s: float


def run(
    seed: int,
    replicas: int = 2,
    keys: int = 8,
    cache: int = 6,
    streams: int = 8,
    requests: int = 1500,
    warmup: int = 200,
    hit_s: float = 0.035,
    miss_s: float = 0.075,
    per_load: float = 0.12,
    refresh_s: float = sched.REFRESH_S,
    threshold: int = 2,
    load_factor: float = 1.5,
) -> Result:
    rng = random.Random(seed)
    ids = [f"replica-{seed}-{i}-{rng.getrandbits(32):08x}" for i in range(replicas)]
    caches: dict[str, OrderedDict[int, None]] = {r: OrderedDict() for r in ids}
    in_flight = dict.fromkeys(ids, 0)
    now = [0.0]
    tables = {r: sched.EndpointTable(self_id=r, own_load=lambda r=r: in_flight[r], clock=lambda: now[0]) for r in ids}
    scheduler = sched.Scheduler(PrefixAwarePolicy(imbalance_threshold=threshold, load_factor=load_factor))
    prompts = [f"System prompt {k}. " + f"rule {k} " * 100 for k in range(keys)]

    def exchange() -> None:
        reports = [
            sched.Endpoint(
                replica_id=r,
                model="m",
                address="-",
                in_flight=in_flight[r],
                load=float(in_flight[r]),
                placed=tables[r].report(),
                shared=tables[r].report_shared(),
            )
            for r in ids
        ]
        for table in tables.values():
            table.update(reports)

    exchange()
    events: list[tuple[float, int, str, str]] = []  # (end, stream, replica, entry)
    hits = misses = issued = 0
    served = dict.fromkeys(ids, 0)
    where: dict[int, set[str]] = {}

    def issue(stream: int) -> None:
        nonlocal hits, misses, issued
        entry = ids[stream % replicas]
        k = rng.randrange(keys)
        request = {"messages": [{"role": "system", "content": prompts[k]}, {"role": "user", "content": str(issued)}]}
        replica = scheduler.pick("m", request, tables[entry])[0].replica_id
        if replica != entry:
            tables[entry].started(replica)
        in_flight[replica] += 1
        lru = caches[replica]
        hit = k in lru
        if hit:
            lru.move_to_end(k)
        else:
            lru[k] = None
            while len(lru) > cache:
                lru.popitem(last=False)
        if issued >= warmup:
            served[replica] += 1
            where.setdefault(k, set()).add(replica)
            hits += hit
            misses += not hit
        issued += 1
        took = (hit_s if hit else miss_s) * (1 + per_load * (in_flight[replica] - 1))
        heapq.heappush(events, (now[0] + took, stream, replica, entry))

    for stream in range(streams):
        issue(stream)
    next_refresh = refresh_s
    while events:
        end, stream, replica, entry = heapq.heappop(events)
        while next_refresh <= end:
            now[0] = next_refresh
            exchange()
            next_refresh += refresh_s
        now[0] = end
        in_flight[replica] -= 1
        if replica != entry:
            tables[entry].finished(replica)
        if issued < requests:
            issue(stream)
    measured = hits + misses
    return Result(
        hits / measured,
        max(served.values()) / (measured / replicas),
        sum(len(r) > 1 for r in where.values()),
        now[0],
    )


@contextmanager
def homes_off() -> Iterator[None]:
    """Placement as before shared keys had homes (every `EndpointTable.home` is None)."""
    real = sched.EndpointTable.home
    sched.EndpointTable.home = lambda self, key, replica_ids: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        sched.EndpointTable.home = real  # type: ignore[method-assign]


def summary(results: list[Result]) -> str:
    rates = sorted(r.hit_rate for r in results)
    shares = [r.max_over_fair for r in results]
    return (
        f"hit rate mean {statistics.fmean(rates):.3f}, 10th pct {rates[len(rates) // 10]:.3f}, worst {rates[0]:.3f};"
        f" busiest mean {statistics.fmean(shares):.2f}x, worst {max(shares):.2f}x;"
        f" keys on 2+ replicas {statistics.fmean(r.keys_on_two_or_more for r in results):.1f}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.placement_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--keys", type=int, default=8, help="shared system prompts")
    p.add_argument("--cache", type=int, default=6, help="prompts each replica's prefix cache holds")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--hit-s", type=float, default=0.035)
    p.add_argument("--miss-s", type=float, default=0.075)
    p.add_argument("--per-load", type=float, default=0.12)
    p.add_argument("--threshold", type=int, default=2, help="router_imbalance_threshold")
    p.add_argument("--load-factor", type=float, default=1.5, help="router_load_factor")
    p.add_argument("--compare-no-home", action="store_true", help="also run with shared-key homes off")
    args = p.parse_args(argv)
    params = {
        k: getattr(args, k)
        for k in ("replicas", "keys", "cache", "streams", "requests", "hit_s", "miss_s", "per_load", "threshold")
    }
    params["load_factor"] = args.load_factor
    print(f"{args.seeds} seeds: {params}")
    if args.compare_no_home:
        with homes_off():
            print("no homes:", summary([run(seed, **params) for seed in range(args.seeds)]))
    print("homes:   ", summary([run(seed, **params) for seed in range(args.seeds)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
