"""The open-loop load generator (loadtests/openloop.py) against the API over real HTTP, on the simulator.

The app is the direct ingress's uvicorn server in the test's own loop (as
tests/api/test_stalled_reader.py runs it) over the simulated engine, so the
generator's clients (aiohttp and the openai SDK) stream real SSE over loopback and
the engine's timing is known: a level's rows, goodput, the cap on outstanding
requests and the knee can be checked against it. No Ray, no engine process.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from loadtests import openloop as ol
from loadtests.servers import free_port
from serving.deployments.direct.http_server import DirectHTTPServer
from tests.inprocess import MODEL, simulated_app


@contextlib.asynccontextmanager
async def served(engine_args: dict | None = None, **options):
    api = await simulated_app(engine_args, **options)
    port = free_port()
    http = await DirectHTTPServer.start(api.app, "127.0.0.1", port, graceful_timeout_s=1)
    try:
        yield api, f"http://127.0.0.1:{port}"
    finally:
        await http.stop()
        await api.aclose()


def workload(output_tokens: int = 8, model: str = MODEL) -> ol.Workload:
    return ol.Workload(model, ol.parse_length("16"), ol.parse_length(str(output_tokens)), tokens_per_word=1.0)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("client", ol.CLIENTS)
async def test_a_sweep_sends_every_scheduled_request_and_writes_a_row_per_level(client, tmp_path):
    async with served({"decode_s_per_token": 0.001}) as (_, url):
        summary = await ol.sweep(
            ol.Target(url, client=client),
            workload(output_tokens=8),
            ol.LevelOptions(duration_s=1.0, arrivals="poisson", seed=3),
            ol.SweepOptions(rates=[10.0, 25.0], cooldown_s=0.1, warmup=2),
            ol.SLO(ttft_ms=5000, itl_ms=1000),
            out=tmp_path,
            log=lambda _line: None,
        )
    rows = summary["rows"]
    assert [r["rate"] for r in rows] == [10.0, 25.0]
    lines = read_jsonl(tmp_path / "requests.jsonl")
    for row in rows:
        expected = ol.schedule(row["rate"], 1.0, arrivals="poisson", seed=3)
        mine = [x for x in lines if x["level"] == row["level"]]
        assert row["scheduled"] == row["sent"] == row["ok"] == len(expected) == len(mine) > 0
        assert [x["scheduled_s"] for x in mine] == pytest.approx(expected)
        assert row["errors"] == 0 and row["capped"] == 0
        assert row["goodput_share"] == 1.0 and row["good"] == row["ok"]
        assert row["ttft_ms"]["p50"] > 0 and row["e2e_ms"]["p99"] >= row["ttft_ms"]["p99"]
        assert row["itl_ms"]["p50"] > 0
    for x in lines:
        assert x["status"] == "ok" and x["http_status"] == 200 and x["error"] is None and x["good"] is True
        assert x["output_tokens"] == 8 and x["prompt_tokens"] > 0 and x["chunks"] >= 1
        assert x["sent_s"] >= x["scheduled_s"] and x["late_ms"] >= 0
        assert 0 < x["ttft_ms"] <= x["e2e_ms"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["rows"] == rows and saved["client"] == client
    assert (tmp_path / "table.md").read_text().count("\n") == 2 + len(rows)


async def test_goodput_counts_only_requests_meeting_the_slos(tmp_path):
    # 20 ms per token: no request's mean ITL can be under 5 ms, and its TTFT is well under 2 s.
    async with served({"decode_s_per_token": 0.02}) as (_, url):
        summary = await ol.sweep(
            ol.Target(url),
            workload(output_tokens=4),
            ol.LevelOptions(duration_s=1.0, arrivals="constant"),
            ol.SweepOptions(rates=[5.0], warmup=0),
            ol.SLO(ttft_ms=2000, itl_ms=5),
            out=tmp_path,
            log=lambda _line: None,
        )
    (row,) = summary["rows"]
    lines = read_jsonl(tmp_path / "requests.jsonl")
    assert row["ok"] == 5 and row["good"] == 0 and row["goodput_share"] == 0.0 and row["goodput_rps"] == 0.0
    assert all(x["status"] == "ok" and x["good"] is False and x["itl_ms"] > 5 for x in lines)
    assert row["itl_ms"]["p50"] >= 15


async def test_the_outstanding_cap_is_reported_not_silent(tmp_path):
    # Each request takes ~0.4 s (20 tokens at 20 ms); 10 arrive in 0.5 s with at most 3 in flight.
    async with served({"decode_s_per_token": 0.02}) as (api, url):
        summary = await ol.sweep(
            ol.Target(url),
            workload(output_tokens=20),
            ol.LevelOptions(duration_s=0.5, arrivals="constant", max_outstanding=3),
            ol.SweepOptions(rates=[20.0], warmup=0),
            ol.SLO(),
            out=tmp_path,
            log=lambda _line: None,
        )
        assert (await api.stats())["running"] == 0
    (row,) = summary["rows"]
    assert row["scheduled"] == row["ok"] == 10
    assert row["peak_outstanding"] == 3 and row["max_outstanding"] == 3
    assert row["capped"] == 7  # all but the first three waited for a place
    lines = read_jsonl(tmp_path / "requests.jsonl")
    assert [x["capped"] for x in lines] == [False] * 3 + [True] * 7
    assert all(x["late_ms"] > 100 for x in lines[3:])  # sent late, and flagged so
    assert row["late_ms"]["max"] < 100  # the client's own lateness leaves the capped ones out
    assert any("waited for a place under --max-outstanding 3" in w for w in summary["warnings"])


async def test_failed_requests_are_recorded_with_the_servers_error(tmp_path):
    async with served() as (_, url):
        summary = await ol.sweep(
            ol.Target(url),
            workload(model="no-such-model"),
            ol.LevelOptions(duration_s=0.5, arrivals="constant"),
            ol.SweepOptions(rates=[6.0], warmup=0),
            ol.SLO(),
            out=tmp_path,
            log=lambda _line: None,
        )
    (row,) = summary["rows"]
    assert row["ok"] == 0 and row["errors"] == 3 and row["goodput_share"] == 0.0 and not row["passed"]
    lines = read_jsonl(tmp_path / "requests.jsonl")
    assert {(x["status"], x["http_status"]) for x in lines} == {("http_error", 404)}
    assert all("no-such-model" in x["error"] for x in lines)
    assert list(row["error_kinds"].values()) == [3]


async def test_a_warm_up_that_fails_entirely_stops_the_sweep():
    async with served() as (_, url):
        with pytest.raises(RuntimeError, match="every warm-up request failed"):
            await ol.sweep(
                ol.Target(url, api_key="x"),
                workload(model="no-such-model"),
                ol.LevelOptions(duration_s=0.5),
                ol.SweepOptions(rates=[1.0], warmup=2),
                ol.SLO(),
                log=lambda _line: None,
            )


async def test_the_knee_search_finds_the_engines_capacity(tmp_path):
    # One sequence at a time, 10 tokens at 10 ms: ~0.1 s per request, a capacity near 9 req/s.
    async with served({"decode_s_per_token": 0.01, "max_num_seqs": 1, "ttft_base_s": 0.0}) as (_, url):
        summary = await ol.sweep(
            ol.Target(url),
            workload(output_tokens=10),
            ol.LevelOptions(duration_s=1.0, arrivals="constant"),
            ol.SweepOptions(rates=None, start_rate=2.0, max_rate=64.0, refine=1, cooldown_s=0.1, warmup=1),
            ol.SLO(),
            out=tmp_path,
            log=lambda _line: None,
        )
    rows = summary["rows"]
    rates = [r["rate"] for r in rows]
    assert rates[:3] == [2.0, 4.0, 8.0] or rates[:2] == [2.0, 4.0]
    passing = [r["rate"] for r in rows if r["passed"]]
    failing = [r["rate"] for r in rows if not r["passed"]]
    assert passing and failing and max(passing) < min(failing)
    assert max(passing) <= 11 and min(failing) >= 6
    # Past the knee, the server did what it could: achieved throughput stays near its capacity.
    assert all(r["achieved_rps"] <= 12 for r in rows if not r["passed"])
    assert summary["knee"] == f"knee between {max(passing):g} req/s (kept up) and {min(failing):g} req/s (did not)"
