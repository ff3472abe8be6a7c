"""Open-loop load for capacity planning: requests at scheduled times, a rate sweep, goodput under SLOs.

    python -m loadtests.openloop --host http://127.0.0.1:8000 --rates 1,2,4,8 --duration 30 \\
        --arrivals poisson --slo-ttft-ms 500 --slo-itl-ms 50 --out loadtests/results/openloop
    python -m loadtests.openloop --serve configs/dev.yaml --find-knee --start-rate 2 --max-rate 64

Locust's users (loadtests/locustfile.py) are a closed loop: a user sends its next
request when its last one ended, so a slow server is sent less and its queue never
shows. Capacity planning asks the other question: "at N requests/s arriving, what
latency do users see, and where does it break?". Here every request has an arrival
time drawn before the level starts (constant, Poisson, or gamma inter-arrivals with a
burstiness factor, as `vllm bench serve` draws them) and is sent at that time whether
or not the earlier ones finished.

Why aiohttp and not the `openai` SDK (both are here, `--client`): on 2 cores the
client shares the CPU with the server it measures. The SDK builds a pydantic object
per streamed chunk through httpx; the aiohttp path looks at each SSE event's bytes
(loadtests/sse.py) and decodes only the usage chunk's JSON: about a quarter of the
SDK's CPU per request, measured in docs/load-testing.md ("The client: aiohttp, not the
`openai` SDK"). The client reports how late it sent
each request (sent - scheduled) and its own CPU per level, so a run where the client
was the bottleneck says so.

What is measured, per request (JSONL, `--out DIR/requests.jsonl`): scheduled and sent
time (seconds from the level's start), TTFT (sent -> first chunk with content), ITL
(the request's mean gap per output token after the first: (last - first content) /
(tokens - 1), as GuideLLM, AIPerf and bench.py take it) and its longest chunk gap,
end-to-end time, tokens (from `usage`), status and error. Per level (one row): the
rate asked for and the rate actually scheduled, achieved throughput, goodput (requests
meeting every SLO given, per second and as a share of the requests scheduled),
p50/p90/p95/p99 of TTFT, ITL and e2e, the pooled chunk-gap p99 (per-token stalls a
mean hides), and the client's lateness and CPU.

Chunk times are taken per network read, not per SSE event: every event of one read
(aiohttp's `iter_any()`) gets the same timestamp, and the SDK yields one read's chunks
back to back. When the server or the kernel batches several chunks into one read,
their gaps count as 0 and the whole wait lands on the gap before the batch, so gap
percentiles can show 0 ms under load. A request's TTFT and ITL (first to last content
chunk, over its tokens) move only by where their first and last chunk were read.

Outstanding requests are capped (`--max-outstanding`): at the cap a request waits for
a free place and is sent late. That is never silent: it is counted per level
(`capped`), flagged in its JSONL line, left out of the client-lateness percentiles
(which measure the client, not the cap) and warned about, since the offered rate was
then not held.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from loadtests import scenarios
from loadtests.sse import SSEReader

PERCENTILES = (50, 90, 95, 99)
ARRIVALS = ("constant", "poisson", "gamma")
CLIENTS = ("aiohttp", "openai")
EXIT_OK, EXIT_BROKEN = 0, 2

# --------------------------------------------------------------------------- arrival schedules


def schedule(
    rate: float, duration_s: float, *, arrivals: str = "poisson", burstiness: float = 1.0, seed: int | str = 0
) -> list[float]:
    """Arrival times in [0, duration_s), seconds from the level's start, for `rate` requests/s.

    constant: every 1/rate s from 0 (exactly rate x duration requests).
    poisson:  exponential inter-arrivals of mean 1/rate (a Poisson process: counts in a
              window have variance = mean).
    gamma:    gamma inter-arrivals of shape `burstiness` and mean 1/rate, as `vllm bench
              serve` draws them: the interval's squared coefficient of variation is
              1/burstiness, so < 1 is burstier than Poisson, 1 is Poisson, > 1 is smoother
              (towards constant).
    The same (rate, duration, arrivals, burstiness, seed) gives the same times.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of requests/s, got {rate!r}")
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration must be positive, got {duration_s!r}")
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, got {arrivals!r}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be positive, got {burstiness!r}")
    if arrivals != "gamma" and burstiness != 1.0:
        raise ValueError("burstiness applies to --arrivals gamma only (poisson is gamma with burstiness 1)")
    if arrivals == "constant":
        return [i / rate for i in range(math.ceil(rate * duration_s - 1e-9))]
    rng = random.Random(f"{seed}:{arrivals}:{burstiness}:{rate}")
    shape = 1.0 if arrivals == "poisson" else burstiness
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.gammavariate(shape, 1.0 / (rate * shape))
        if t >= duration_s:
            return times
        times.append(t)


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile by linear interpolation between closest ranks (numpy's default); None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def percentiles(values: Sequence[float], scale: float = 1.0) -> dict[str, float | None]:
    """{'p50': ..., 'p90': ..., 'p95': ..., 'p99': ...}, each value x scale, rounded to 0.01."""
    out: dict[str, float | None] = {}
    for q in PERCENTILES:
        v = percentile(values, q)
        out[f"p{q}"] = None if v is None else round(v * scale, 2)
    return out


@dataclass(frozen=True)
class SLO:
    """Per-request service levels; None: not judged. Times in ms."""

    ttft_ms: float | None = None
    itl_ms: float | None = None

    def met(self, rec: Record) -> bool:
        """A request is good when it succeeded and met every SLO given.

        ITL is the request's mean gap per token after the first; a request with one
        output token has no ITL and meets an ITL SLO by definition.
        """
        if rec.status != "ok":
            return False
        if self.ttft_ms is not None and (rec.ttft_ms is None or rec.ttft_ms > self.ttft_ms):
            return False
        if self.itl_ms is not None and rec.itl_ms is not None and rec.itl_ms > self.itl_ms:
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.ttft_ms is not None:
            parts.append(f"TTFT <= {self.ttft_ms:g} ms")
        if self.itl_ms is not None:
            parts.append(f"ITL <= {self.itl_ms:g} ms")
        return " and ".join(parts) if parts else "none given: every successful request counts"


# --------------------------------------------------------------------------- per request


@dataclass
class Record:
    """One request of a level: its JSONL line (times from the level's start, latencies in ms)."""

    level: int
    rate: float
    i: int
    scheduled_s: float
    sent_s: float | None = None
    late_ms: float | None = None  # sent - scheduled
    capped: bool = False  # waited for a place under --max-outstanding before it was sent
    ttft_ms: float | None = None
    itl_ms: float | None = None
    itl_max_ms: float | None = None  # longest gap between two chunks with content
    e2e_ms: float | None = None
    end_s: float | None = None
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    chunks: int = 0  # chunks with content
    status: str | None = None  # ok | http_error | stream_error | timeout | connection_error | cancelled
    http_status: int | None = None
    error: str | None = None
    good: bool | None = None  # met every SLO given (set when the level is summarized)
    gaps: list[float] = field(default_factory=list, repr=False)  # seconds between content chunks (not exported)

    def line(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("gaps")
        return d


def finish_timing(rec: Record, sent: float, content_times: list[float], end: float, tokens: int | None) -> None:
    """TTFT, ITL, gaps and e2e of a finished stream, from perf_counter stamps."""
    rec.e2e_ms = (end - sent) * 1000
    rec.chunks = len(content_times)
    rec.output_tokens = tokens if tokens is not None else len(content_times)
    if content_times:
        rec.ttft_ms = (content_times[0] - sent) * 1000
        rec.gaps = [b - a for a, b in zip(content_times, content_times[1:], strict=False)]
        rec.itl_max_ms = max(rec.gaps) * 1000 if rec.gaps else None
        if rec.output_tokens > 1:
            rec.itl_ms = (content_times[-1] - content_times[0]) * 1000 / (rec.output_tokens - 1)


def _value_start(payload: bytes, key: bytes) -> int:
    """Index of the value of `"key":` in a JSON payload (spaces after the colon skipped), or -1."""
    at = payload.find(b'"' + key + b'":')
    if at < 0:
        return -1
    at += len(key) + 3
    while at < len(payload) and payload[at : at + 1] in (b" ", b"\t"):
        at += 1
    return at


def has_content(payload: bytes) -> bool:
    """Whether a chunk carries output text (a non-empty "content" string), without decoding its JSON."""
    at = _value_start(payload, b"content")
    return at >= 0 and payload[at : at + 1] == b'"' and payload[at + 1 : at + 2] != b'"'


def has_usage(payload: bytes) -> bool:
    at = _value_start(payload, b"usage")
    return at >= 0 and payload[at : at + 1] == b"{"


async def send_aiohttp(
    session: aiohttp.ClientSession, url: str, body: bytes, rec: Record, t0: float, timeout_s: float
) -> None:
    """POST one streaming chat request and time it; outcome into `rec`. SSE events are read as bytes."""
    sent = time.perf_counter()
    rec.sent_s = sent - t0
    content: list[float] = []
    tokens: int | None = None
    try:
        async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            rec.http_status = resp.status
            if resp.status != 200:
                rec.status, rec.error = "http_error", _error_text(await resp.read())
                return
            reader = SSEReader()
            async for data in resp.content.iter_any():
                # One stamp per read: events that arrived together share it (0-ms gaps; the module docstring).
                now = time.perf_counter()
                for event in reader.feed(data):
                    payload = event.data
                    if event.done:
                        continue
                    if b'"error"' in payload[:12]:
                        rec.status, rec.error = "stream_error", _error_text(payload)
                        return
                    if has_usage(payload):
                        usage = event.json()["usage"]
                        tokens, rec.prompt_tokens = usage.get("completion_tokens"), usage.get("prompt_tokens")
                    if has_content(payload):
                        content.append(now)
            end = time.perf_counter()
            if not reader.done:
                rec.status, rec.error = "stream_error", "the stream ended without data: [DONE]"
            elif not content:
                rec.status, rec.error = "stream_error", "the stream carried no output"
            else:
                rec.status = "ok"
            finish_timing(rec, sent, content, end, tokens)
            rec.end_s = end - t0
    except TimeoutError:
        rec.status, rec.error = "timeout", f"no complete answer within --request-timeout {timeout_s:g} s"
    except aiohttp.ClientError as exc:
        rec.status, rec.error = "connection_error", f"{type(exc).__name__}: {exc}"[:300]
    finally:
        _ended(rec, sent, t0)


def _ended(rec: Record, sent: float, t0: float) -> None:
    """End and e2e time of a request that did not finish its stream (an error, a timeout, cancelled)."""
    if rec.end_s is None:
        now = time.perf_counter()
        rec.end_s, rec.e2e_ms = now - t0, (now - sent) * 1000


def _error_text(raw: bytes) -> str:
    """The OpenAI error message of a body, else the body's start."""
    try:
        data = json.loads(raw)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
    except ValueError:
        pass
    return raw[:300].decode(errors="replace")


async def send_openai(client: Any, body: dict[str, Any], rec: Record, t0: float, timeout_s: float) -> None:
    """The same request through the official `openai` async client (one parsed object per chunk)."""
    import openai

    sent = time.perf_counter()
    rec.sent_s = sent - t0
    content: list[float] = []
    tokens: int | None = None
    extra = {k: v for k, v in body.items() if k not in ("model", "messages", "max_tokens", "stream", "stream_options")}
    try:
        stream = await client.chat.completions.create(
            model=body["model"],
            messages=body["messages"],
            max_tokens=body["max_tokens"],
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra or None,
            timeout=timeout_s,
        )
        rec.http_status = 200
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.usage is not None:
                tokens, rec.prompt_tokens = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                content.append(now)
        end = time.perf_counter()
        rec.status = "ok" if content else "stream_error"
        rec.error = None if content else "the stream carried no output"
        finish_timing(rec, sent, content, end, tokens)
        rec.end_s = end - t0
    except openai.APIStatusError as exc:
        rec.status, rec.http_status = "http_error", exc.status_code
        rec.error = _error_text(exc.response.content) if exc.response is not None else str(exc)[:300]
    except openai.APITimeoutError:
        rec.status, rec.error = "timeout", f"no complete answer within --request-timeout {timeout_s:g} s"
    except openai.APIError as exc:  # connection errors, and an error event inside the stream
        rec.status = "connection_error" if isinstance(exc, openai.APIConnectionError) else "stream_error"
        rec.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        _ended(rec, sent, t0)


# --------------------------------------------------------------------------- workload


def parse_length(text: str) -> scenarios.Dist:
    """'64' (every request) or '32..128' (uniform, inclusive) tokens."""
    lo, sep, hi = str(text).partition("..")
    try:
        if not sep:
            n = int(lo)
            if n >= 1:
                return scenarios.const(n)
        elif 1 <= int(lo) <= int(hi):
            return scenarios.uniform(int(lo), int(hi))
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"bad token length {text!r}: use N or LO..HI (whole numbers >= 1)")


@dataclass(frozen=True)
class Workload:
    """What each request asks: streaming chat, a filler prompt of ~prompt_tokens, exactly output_tokens out."""

    model: str
    prompt_tokens: scenarios.Dist
    output_tokens: scenarios.Dist
    tokens_per_word: float = 1.3
    ignore_eos: bool = True

    def body(self, rng: random.Random) -> dict[str, Any]:
        text = scenarios.make_text(rng, scenarios.words_for(self.prompt_tokens.sample(rng), self.tokens_per_word))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": self.output_tokens.sample(rng),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body


# --------------------------------------------------------------------------- one level


@dataclass
class Target:
    """Where the load goes: base URL (without /v1), API key, the client to send with."""

    base_url: str
    api_key: str = ""
    client: str = "aiohttp"
    request_timeout_s: float = 120.0

    @property
    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


@dataclass
class LevelOptions:
    duration_s: float = 30.0
    arrivals: str = "poisson"
    burstiness: float = 1.0
    seed: int = 0
    max_outstanding: int = 1000
    drain_timeout_s: float = 120.0


@dataclass
class Level:
    """A level's outcome: its records and what the client measured of itself."""

    index: int
    rate: float
    duration_s: float
    records: list[Record]
    client_cpu_s: float
    wall_s: float
    peak_outstanding: int


class _Senders:
    """The client objects of one sweep (a connection pool is reused across levels, as a real client's is)."""

    def __init__(self, target: Target):
        self.target = target
        self.url = target.base_url.rstrip("/") + "/v1/chat/completions"
        self.session: aiohttp.ClientSession | None = None
        self.openai: Any = None

    async def __aenter__(self) -> _Senders:
        if self.target.client == "aiohttp":
            # limit=0: no pool limit, so aiohttp never caps outstanding requests silently (its default is 100).
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            self.session = aiohttp.ClientSession(connector=connector, headers=self.target.headers)
        else:
            import httpx
            from openai import AsyncOpenAI

            # httpx's pool would queue requests past its limits without saying so: no limit here either.
            http = httpx.AsyncClient(limits=httpx.Limits(max_connections=None, max_keepalive_connections=None))
            self.openai = AsyncOpenAI(
                base_url=self.target.base_url.rstrip("/") + "/v1",
                api_key=self.target.api_key or "none",
                max_retries=0,
                http_client=http,
            )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.openai is not None:
            await self.openai.close()

    async def send(self, body: dict[str, Any], raw: bytes, rec: Record, t0: float) -> None:
        timeout = self.target.request_timeout_s
        if self.session is not None:
            await send_aiohttp(self.session, self.url, raw, rec, t0, timeout)
        else:
            await send_openai(self.openai, body, rec, t0, timeout)


async def run_level(
    senders: _Senders, index: int, rate: float, workload: Workload, opts: LevelOptions, lead_s: float = 0.05
) -> Level:
    """Send one level: every request at its scheduled time (at most `max_outstanding` in flight), then wait
    up to `drain_timeout_s` for the last ones; what is still running then is cancelled and recorded so."""
    times = schedule(rate, opts.duration_s, arrivals=opts.arrivals, burstiness=opts.burstiness, seed=opts.seed)
    rng = random.Random(f"{opts.seed}:bodies:{index}:{rate}")
    # Bodies are drawn and encoded before the clock starts: none of that work can make a request late.
    bodies = [workload.body(rng) for _ in times]
    raws = [json.dumps(b).encode() for b in bodies]
    records = [Record(level=index, rate=rate, i=i, scheduled_s=t) for i, t in enumerate(times)]
    outstanding = 0
    peak = 0
    freed = asyncio.Event()

    async def one(rec: Record, body: dict[str, Any], raw: bytes) -> None:
        nonlocal outstanding
        try:
            await senders.send(body, raw, rec, t0)
        finally:
            if rec.status is None:
                rec.status, rec.error = "cancelled", "still running when the level ended (--drain-timeout)"
            outstanding -= 1
            freed.set()

    tasks: list[asyncio.Task] = []
    cap_released_s = -math.inf
    cpu0 = time.process_time()
    t0 = time.perf_counter() + lead_s
    for rec, body, raw in zip(records, bodies, raws, strict=True):
        # A loop's timers may fire early by up to their resolution (uvloop's is 1 ms): sleep until it is time.
        while (delay := t0 + rec.scheduled_s - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        # A request is capped when it waited for a place, or was due while the dispatcher waited for one.
        rec.capped = rec.scheduled_s < cap_released_s
        while outstanding >= opts.max_outstanding:
            rec.capped = True
            freed.clear()
            await freed.wait()
            cap_released_s = time.perf_counter() - t0
        outstanding += 1
        peak = max(peak, outstanding)
        tasks.append(asyncio.create_task(one(rec, body, raw)))
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=opts.drain_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    for rec in records:
        if rec.sent_s is not None:
            rec.late_ms = (rec.sent_s - rec.scheduled_s) * 1000
    return Level(index, rate, opts.duration_s, records, cpu, wall, peak)


# --------------------------------------------------------------------------- one row per level


def summarize(level: Level, slo: SLO, max_outstanding: int | None = None) -> dict[str, Any]:
    """A level's row. Marks each record's `good`.

    Throughput is taken over the span of completions: achieved req/s = (ok - 1) /
    (last ok end - first ok end). It follows the arrival rate while the server keeps up,
    whatever each request's latency, and falls to the server's capacity once a backlog
    builds; dividing by the level's duration instead would count slow answers as lost
    throughput. `achieved_ratio` compares it with the arrivals measured the same way,
    (scheduled - 1) / (last - first arrival). Goodput req/s is achieved x the share of
    successful requests that were good; goodput share is good / scheduled (errors and
    cancelled requests are not good). `gap_ms` pools every gap between two content chunks; chunks read
    together from the socket share one timestamp, so their gaps are 0 (the module docstring).
    """
    recs = level.records
    for r in recs:
        r.good = slo.met(r)
    ok = [r for r in recs if r.status == "ok"]
    good = [r for r in recs if r.good]
    ends = sorted(r.end_s for r in ok if r.end_s is not None)
    span = ends[-1] - ends[0] if len(ends) >= 2 else 0.0
    achieved = (len(ends) - 1) / span if span > 0 else None
    # Tokens of the requests completed after the first completion, over the same span.
    first_end = ends[0] if ends else 0.0
    tokens_in_span = sum(r.output_tokens or 0 for r in ok if r.end_s is not None and r.end_s > first_end)
    uncapped_late = [r.late_ms for r in recs if r.late_ms is not None and not r.capped]
    capped = [r for r in recs if r.capped]
    errors: dict[str, int] = {}
    for r in recs:
        if r.status != "ok":
            key = f"{r.status}: {r.error}"[:160]
            errors[key] = errors.get(key, 0) + 1
    gaps = [g for r in ok for g in r.gaps]
    offered = len(recs) / level.duration_s
    # The arrivals' own rate over their span, the same estimator as `achieved`: with few requests a
    # Poisson level's span is shorter than its duration, and comparing against n / duration would be biased.
    arrival_span = recs[-1].scheduled_s - recs[0].scheduled_s if len(recs) >= 2 else 0.0
    arrival_rps = (len(recs) - 1) / arrival_span if arrival_span > 0 else None
    row: dict[str, Any] = {
        "level": level.index,
        "rate": level.rate,
        "offered_rps": round(offered, 3),
        "scheduled": len(recs),
        "sent": sum(1 for r in recs if r.sent_s is not None),
        "ok": len(ok),
        "errors": len(recs) - len(ok),
        "capped": len(capped),
        "achieved_rps": None if achieved is None else round(achieved, 3),
        "arrival_rps": None if arrival_rps is None else round(arrival_rps, 3),
        "achieved_ratio": None if achieved is None or arrival_rps is None else round(achieved / arrival_rps, 3),
        "output_tok_s": round(tokens_in_span / span, 1) if span > 0 else None,
        "goodput_rps": None if achieved is None or not ok else round(achieved * len(good) / len(ok), 3),
        "goodput_share": round(len(good) / len(recs), 4) if recs else None,
        "good": len(good),
        "ttft_ms": percentiles([r.ttft_ms for r in ok if r.ttft_ms is not None]),
        "itl_ms": percentiles([r.itl_ms for r in ok if r.itl_ms is not None]),
        "e2e_ms": percentiles([r.e2e_ms for r in ok if r.e2e_ms is not None]),
        "gap_ms": percentiles(gaps, 1000),
        "late_ms": {
            **percentiles(uncapped_late),
            "max": round(max(uncapped_late), 2) if uncapped_late else None,
        },
        "capped_late_max_ms": round(max(r.late_ms or 0 for r in capped), 1) if capped else None,
        "drain_s": round(ends[-1] - level.duration_s, 3) if ends else None,
        "peak_outstanding": level.peak_outstanding,
        "client_cpu_pct": round(100 * level.client_cpu_s / level.wall_s, 1) if level.wall_s > 0 else None,
        "error_kinds": errors,
    }
    if max_outstanding is not None:
        row["max_outstanding"] = max_outstanding
    return row


def warnings_for(row: dict[str, Any], max_late_ms: float, max_client_cpu_pct: float) -> list[str]:
    """What makes a row's numbers say less than they seem to: the cap, a late or busy client."""
    out = []
    rate = f"rate {row['rate']:g}"
    if row["capped"]:
        out.append(
            f"{rate}: {row['capped']} of {row['scheduled']} requests waited for a place under --max-outstanding "
            f"{row.get('max_outstanding')} (up to {row['capped_late_max_ms']} ms late): the offered rate was not held"
        )
    late99 = row["late_ms"]["p99"]
    if late99 is not None and late99 > max_late_ms:
        out.append(
            f"{rate}: the client sent requests late (p99 {late99} ms, max {row['late_ms']['max']} ms "
            f"after their scheduled time; > {max_late_ms:g} ms): the client may be the bottleneck"
        )
    cpu = row["client_cpu_pct"]
    if cpu is not None and cpu > max_client_cpu_pct:
        out.append(f"{rate}: the client used {cpu}% of a core (> {max_client_cpu_pct:g}%)")
    return out


# --------------------------------------------------------------------------- the sweep


def level_passes(row: dict[str, Any], knee_ratio: float, min_goodput: float) -> bool:
    """Whether the server kept up with a level: achieved >= knee_ratio x the arrival rate, and goodput share >=
    min_goodput."""
    ratio = row["achieved_ratio"]
    share = row["goodput_share"]
    return ratio is not None and ratio >= knee_ratio and share is not None and share >= min_goodput


class KneeSearch:
    """Find the knee: double the rate from `start` while levels pass, then bisect `refine` times between the
    last passing and the first failing rate. `next_rate()` is None when done; `add(rate, passed)` after each."""

    def __init__(self, start: float, max_rate: float, refine: int = 2):
        if not 0 < start <= max_rate:
            raise ValueError(f"need 0 < --start-rate <= --max-rate, got {start} and {max_rate}")
        self.start, self.max_rate, self.refine = start, max_rate, refine
        self.passing: float | None = None  # highest rate that passed
        self.failing: float | None = None  # lowest rate that failed
        self._next: float | None = start
        self._bisections = 0

    def next_rate(self) -> float | None:
        return self._next

    def add(self, rate: float, passed: bool) -> None:
        if passed:
            self.passing = rate if self.passing is None else max(self.passing, rate)
        else:
            self.failing = rate if self.failing is None else min(self.failing, rate)
        if self.failing is None:
            doubled = rate * 2
            self._next = doubled if doubled <= self.max_rate else None
            if self._next is None and rate < self.max_rate:
                self._next = self.max_rate
            return
        if self.passing is None or self._bisections >= self.refine:
            self._next = None
            return
        self._bisections += 1
        self._next = round((self.passing + self.failing) / 2, 3)

    def verdict(self) -> str:
        if self.failing is None:
            return f"no knee up to {self.passing:g} req/s (--max-rate {self.max_rate:g})"
        if self.passing is None:
            return f"the first level ({self.failing:g} req/s) already failed: start lower"
        return f"knee between {self.passing:g} req/s (kept up) and {self.failing:g} req/s (did not)"


# --------------------------------------------------------------------------- setup: model, calibration, warm-up


async def discover_model(target: Target) -> str:
    async with aiohttp.ClientSession(headers=target.headers) as http:
        async with http.get(target.base_url.rstrip("/") + "/v1/models") as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET /v1/models -> HTTP {resp.status}: {_error_text(await resp.read())}")
            ids = [m["id"] for m in (await resp.json())["data"]]
    if not ids:
        raise RuntimeError("GET /v1/models lists no model")
    return ids[0]


async def measure_tokens_per_word(target: Target, model: str, seed: int) -> float:
    """Prompt tokens per filler word on this model: one /v1/completions call of 300 words (as the locustfile)."""
    words = 300
    prompt = scenarios.make_text(random.Random(f"{seed}:calibrate"), words)
    body = {"model": model, "prompt": prompt, "max_tokens": 1}
    async with aiohttp.ClientSession(headers=target.headers) as http:
        async with http.post(target.base_url.rstrip("/") + "/v1/completions", json=body) as resp:
            if resp.status != 200:
                raise RuntimeError(f"calibration POST /v1/completions -> HTTP {resp.status}: {await resp.text()}")
            return (await resp.json())["usage"]["prompt_tokens"] / words


async def warm_up(senders: _Senders, workload: Workload, n: int, seed: int) -> list[Record]:
    """`n` requests, two at a time, not counted: first connections, the engine's first steps."""
    rng = random.Random(f"{seed}:warmup")
    recs = [Record(level=-1, rate=0.0, i=i, scheduled_s=0.0) for i in range(n)]
    for pair in range(0, n, 2):
        batch = []
        for rec in recs[pair : pair + 2]:
            body = workload.body(rng)
            batch.append(senders.send(body, json.dumps(body).encode(), rec, time.perf_counter()))
        await asyncio.gather(*batch)
    return recs


# --------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table, one row per level (by rate)."""

    def f(v: Any, nd: int = 1) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.{nd}f}"
        return str(v)

    head = (
        "| rate | offered req/s | sent | ok | err | capped | achieved req/s | out tok/s | goodput req/s | good % "
        "| TTFT p50 / p90 / p99 ms | ITL p50 / p99 ms | gap p99 ms | e2e p50 / p99 ms | late p99 / max ms "
        "| client CPU % |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: r["rate"]):
        t, i, e, lt = r["ttft_ms"], r["itl_ms"], r["e2e_ms"], r["late_ms"]
        share = None if r["goodput_share"] is None else 100 * r["goodput_share"]
        lines.append(
            f"| {r['rate']:g} | {f(r['offered_rps'], 2)} | {r['sent']} | {r['ok']} | {r['errors']} | {r['capped']} "
            f"| {f(r['achieved_rps'], 2)} | {f(r['output_tok_s'])} | {f(r['goodput_rps'], 2)} | {f(share)} "
            f"| {f(t['p50'])} / {f(t['p90'])} / {f(t['p99'])} | {f(i['p50'], 2)} / {f(i['p99'], 2)} "
            f"| {f(r['gap_ms']['p99'])} | {f(e['p50'], 0)} / {f(e['p99'], 0)} | {f(lt['p99'], 2)} / {f(lt['max'], 2)} "
            f"| {f(r['client_cpu_pct'])} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run


@dataclass
class SweepOptions:
    rates: list[float] | None = None  # explicit levels; None: find the knee
    start_rate: float = 1.0
    max_rate: float = 64.0
    refine: int = 2
    knee_ratio: float = 0.9
    min_goodput: float = 0.9
    cooldown_s: float = 2.0
    warmup: int = 4
    max_late_ms: float = 10.0
    max_client_cpu_pct: float = 80.0


async def sweep(
    target: Target,
    workload: Workload,
    level_opts: LevelOptions,
    sweep_opts: SweepOptions,
    slo: SLO,
    out: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Run the levels (given, or a knee search), write `out`/requests.jsonl and summary.json; return the summary."""
    jsonl = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before the load)
        jsonl = (out / "requests.jsonl").open("w")
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    search = None if sweep_opts.rates else KneeSearch(sweep_opts.start_rate, sweep_opts.max_rate, sweep_opts.refine)
    try:
        async with _Senders(target) as senders:
            if sweep_opts.warmup:
                warm = await warm_up(senders, workload, sweep_opts.warmup, level_opts.seed)
                bad = [r for r in warm if r.status != "ok"]
                if len(bad) == len(warm):
                    raise RuntimeError(f"every warm-up request failed: {bad[0].status}: {bad[0].error}")
            pending = list(sweep_opts.rates or [])

            def next_rate() -> float | None:
                if search is None:
                    return pending.pop(0) if pending else None
                return search.next_rate()

            index = 0
            rate = next_rate()
            while rate is not None:
                level = await run_level(senders, index, rate, workload, level_opts)
                row = summarize(level, slo, level_opts.max_outstanding)
                row["passed"] = level_passes(row, sweep_opts.knee_ratio, sweep_opts.min_goodput)
                rows.append(row)
                row_warnings = warnings_for(row, sweep_opts.max_late_ms, sweep_opts.max_client_cpu_pct)
                warnings += row_warnings
                if jsonl is not None:
                    for rec in level.records:
                        jsonl.write(json.dumps(rec.line()) + "\n")
                    jsonl.flush()
                log(_row_line(row))
                for w in row_warnings:
                    log(f"  WARNING: {w}")
                if search is not None:
                    search.add(rate, row["passed"])
                index += 1
                rate = next_rate()
                if rate is not None:
                    await asyncio.sleep(sweep_opts.cooldown_s)
    finally:
        if jsonl is not None:
            jsonl.close()
    knee = _knee_from_rows(rows, search)
    summary = {
        "target": target.base_url,
        "client": target.client,
        "model": workload.model,
        "workload": {
            "prompt_tokens": workload.prompt_tokens.describe(),
            "output_tokens": workload.output_tokens.describe(),
            "tokens_per_word": round(workload.tokens_per_word, 3),
            "ignore_eos": workload.ignore_eos,
        },
        "level": asdict(level_opts),
        "sweep": asdict(sweep_opts),
        "slo": {"ttft_ms": slo.ttft_ms, "itl_ms": slo.itl_ms, "described": slo.describe()},
        "rows": rows,
        "knee": knee,
        "warnings": warnings,
    }
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        (out / "table.md").write_text(table(rows) + "\n")
    return summary


def _knee_from_rows(rows: list[dict[str, Any]], search: KneeSearch | None) -> str:
    if search is not None:
        return search.verdict()
    ordered = sorted(rows, key=lambda r: r["rate"])
    passing = [r["rate"] for r in ordered if r["passed"]]
    failing = [r["rate"] for r in ordered if not r["passed"]]
    if not failing:
        return f"every level kept up (up to {ordered[-1]['rate']:g} req/s)" if ordered else "no level ran"
    below = [p for p in passing if p < failing[0]]
    if not below:
        return f"the lowest level ({failing[0]:g} req/s) already did not keep up"
    return f"knee between {below[-1]:g} req/s (kept up) and {failing[0]:g} req/s (did not)"


def _row_line(r: dict[str, Any]) -> str:
    return (
        f"rate {r['rate']:g}: offered {r['offered_rps']:.2f} req/s, achieved {r['achieved_rps']} req/s, "
        f"ok {r['ok']}/{r['scheduled']}, goodput {r['goodput_rps']} req/s ({r['goodput_share']}), "
        f"TTFT p50/p99 {r['ttft_ms']['p50']}/{r['ttft_ms']['p99']} ms, ITL p99 {r['itl_ms']['p99']} ms, "
        f"late p99 {r['late_ms']['p99']} ms, client CPU {r['client_cpu_pct']}%"
        + ("" if r["passed"] else "  <- did not keep up")
    )


# --------------------------------------------------------------------------- command line


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        rates = []
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise argparse.ArgumentTypeError(f"bad --rates {text!r}: positive requests/s, comma-separated (1,2,4,8)")
    return rates


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.openloop",
        description="Open-loop load (requests at scheduled arrival times) and rate sweeps with goodput under SLOs.",
        epilog=(
            "Chunk gaps (gap p99) are timed per network read: SSE events that arrive in one read share a "
            "timestamp, so batched chunks show 0-ms gaps. "
            "Exit codes: 0 the sweep ran; 2 it could not run or not one request succeeded."
        ),
    )
    p.add_argument("--host", default="http://127.0.0.1:8000", help="server base URL (without /v1)")
    p.add_argument("--serve", type=Path, metavar="CONFIG", help="start `serve run CONFIG` first (this session)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="default: $OPENAI_API_KEY")
    p.add_argument("--model", default="", help="default: first of GET /v1/models")
    p.add_argument("--client", choices=CLIENTS, default="aiohttp", help="aiohttp (default, lighter) or openai")
    sweep_group = p.add_argument_group("levels")
    sweep_group.add_argument("--rates", type=_rates, help="requests/s per level, e.g. 1,2,4,8")
    sweep_group.add_argument("--find-knee", action="store_true", help="double from --start-rate, then bisect")
    sweep_group.add_argument("--start-rate", type=float, default=1.0)
    sweep_group.add_argument("--max-rate", type=float, default=64.0)
    sweep_group.add_argument("--refine", type=int, default=2, help="bisections between passing and failing rates")
    sweep_group.add_argument(
        "--knee-ratio", type=float, default=0.9, help="a level keeps up while achieved >= this x the arrival rate"
    )
    sweep_group.add_argument(
        "--min-goodput", type=float, default=0.9, help="... and its goodput share is at least this"
    )
    sweep_group.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per level")
    sweep_group.add_argument("--arrivals", choices=ARRIVALS, default="poisson")
    sweep_group.add_argument(
        "--burstiness",
        type=float,
        default=None,
        help="gamma shape for --arrivals gamma (< 1 burstier than Poisson, > 1 smoother; default 1)",
    )
    sweep_group.add_argument("--seed", type=int, default=0)
    sweep_group.add_argument(
        "--max-outstanding", type=int, default=1000, help="cap on requests in flight (reported when reached)"
    )
    sweep_group.add_argument("--drain-timeout", type=float, default=120.0, help="wait this long after the last arrival")
    sweep_group.add_argument("--request-timeout", type=float, default=120.0)
    sweep_group.add_argument("--cooldown", type=float, default=2.0, help="pause between levels, seconds")
    sweep_group.add_argument("--warmup", type=int, default=4, help="requests sent (and not counted) before level 1")
    work = p.add_argument_group("requests (streaming chat)")
    work.add_argument("--prompt-tokens", type=parse_length, default=parse_length("64"), help="N or LO..HI")
    work.add_argument("--output-tokens", type=parse_length, default=parse_length("64"), help="N or LO..HI")
    work.add_argument("--tokens-per-word", default="auto", help="prompt tokens per filler word, or auto (measured)")
    work.add_argument("--no-ignore-eos", action="store_true", help="do not send vLLM's ignore_eos=true")
    slo = p.add_argument_group("SLOs (goodput counts the requests meeting every one given)")
    slo.add_argument("--slo-ttft-ms", type=float, help="time to first token, ms")
    slo.add_argument("--slo-itl-ms", type=float, help="a request's mean inter-token latency, ms")
    p.add_argument("--max-late-ms", type=float, default=10.0, help="warn when the client's lateness p99 exceeds it")
    p.add_argument("--out", type=Path, help="directory for requests.jsonl, summary.json, table.md")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.rates) == bool(args.find_knee):
        p.error("give exactly one of --rates R1,R2,... and --find-knee")
    if args.burstiness is not None and args.arrivals != "gamma":
        p.error("--burstiness applies to --arrivals gamma")
    if args.burstiness is not None and not (args.burstiness > 0 and math.isfinite(args.burstiness)):
        p.error(f"--burstiness must be a positive finite number, got {args.burstiness:g}")
    for name in ("duration", "request_timeout", "start_rate", "max_rate"):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            p.error(f"--{name.replace('_', '-')} must be a positive finite number, got {value:g}")
    if args.find_knee and args.start_rate > args.max_rate:
        p.error(f"--start-rate ({args.start_rate:g}) cannot be above --max-rate ({args.max_rate:g})")
    if not 0 < args.knee_ratio <= 1:
        p.error(f"--knee-ratio is a share of the arrival rate: 0 < it <= 1, got {args.knee_ratio:g}")
    if not 0 <= args.min_goodput <= 1:
        p.error(f"--min-goodput is a share of the requests: 0 <= it <= 1, got {args.min_goodput:g}")
    # Achieved throughput is measured between completions ((ok - 1) / their span): a level of one request
    # has none, and could only be judged as not keeping up.
    lowest, which = (min(args.rates), "the lowest of --rates") if args.rates else (args.start_rate, "--start-rate")
    if lowest * args.duration < 2:
        p.error(
            f"{which} x --duration is {lowest:g} x {args.duration:g} = {lowest * args.duration:g} requests per "
            "level: at least 2 are needed to measure a level's throughput (raise the rate or the duration)"
        )
    if args.max_outstanding < 1:
        p.error("--max-outstanding must be at least 1")
    if args.drain_timeout < 0 or args.cooldown < 0 or args.warmup < 0 or args.refine < 0:
        p.error("--drain-timeout, --cooldown, --warmup and --refine cannot be negative")
    for name in ("slo_ttft_ms", "slo_itl_ms"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")


def serve_url(config: Path) -> str:
    """The URL `serve run CONFIG` answers on: our app's direct ingress, or Serve's proxy in proxy mode."""
    import yaml

    data = yaml.safe_load(config.read_text())
    app = next(a for a in data["applications"] if "serving.deployments" in a.get("import_path", ""))
    ingress = app.get("args", {}).get("ingress", {})
    if ingress.get("mode", "direct") == "direct":
        return f"http://127.0.0.1:{ingress.get('port', 8000)}"
    return f"http://127.0.0.1:{data.get('http_options', {}).get('port', 8000)}"


async def amain(args: argparse.Namespace) -> int:
    target = Target(args.host, args.api_key, args.client, args.request_timeout)
    slo = SLO(args.slo_ttft_ms, args.slo_itl_ms)
    level_opts = LevelOptions(
        duration_s=args.duration,
        arrivals=args.arrivals,
        burstiness=args.burstiness or 1.0,
        seed=args.seed,
        max_outstanding=args.max_outstanding,
        drain_timeout_s=args.drain_timeout,
    )
    sweep_opts = SweepOptions(
        rates=args.rates,
        start_rate=args.start_rate,
        max_rate=args.max_rate,
        refine=args.refine,
        knee_ratio=args.knee_ratio,
        min_goodput=args.min_goodput,
        cooldown_s=args.cooldown,
        warmup=args.warmup,
        max_late_ms=args.max_late_ms,
    )
    try:
        model = args.model or await discover_model(target)
        tpw = (
            float(args.tokens_per_word)
            if args.tokens_per_word != "auto"
            else await measure_tokens_per_word(target, model, args.seed)
        )
    except (RuntimeError, aiohttp.ClientError, OSError, ValueError) as exc:
        print(f"openloop: setup against {args.host} failed: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    workload = Workload(model, args.prompt_tokens, args.output_tokens, tpw, not args.no_ignore_eos)
    print(
        f"open loop against {args.host} ({args.client}), model {model}, {args.arrivals} arrivals"
        + (f" (burstiness {args.burstiness:g})" if args.burstiness else "")
        + f", {args.duration:g} s per level; prompt {workload.prompt_tokens.describe()}, output "
        f"{workload.output_tokens.describe()} tokens ({tpw:.2f} tokens/word); SLOs: {slo.describe()}",
        flush=True,
    )
    try:
        summary = await sweep(target, workload, level_opts, sweep_opts, slo, args.out, log=_flush_print)
    except RuntimeError as exc:
        print(f"openloop: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    print("\n" + table(summary["rows"]))
    print(f"\n{summary['knee']}")
    for w in summary["warnings"]:
        print(f"WARNING: {w}")
    if args.out:
        print(f"wrote {args.out / 'requests.jsonl'}, {args.out / 'summary.json'}, {args.out / 'table.md'}")
    if not any(r["ok"] for r in summary["rows"]):
        print("openloop: not one request succeeded", file=sys.stderr)
        return EXIT_BROKEN
    return EXIT_OK


def _flush_print(text: str) -> None:
    print(text, flush=True)


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    check_args(p, args)
    if args.serve is None:
        return _run(amain(args))
    from loadtests.servers import ServeProcess

    url = serve_url(args.serve)
    args.host = url
    log_dir = args.out or Path(".")
    log_dir.mkdir(parents=True, exist_ok=True)
    # In this session, its own process group (loadtests/servers.py: start_in_own_group).
    print(f"starting serve run {args.serve} (log: {log_dir / 'serve.log'})", flush=True)
    with ServeProcess(args.serve, f"{url}/ready", log_dir / "serve.log"):
        return _run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
