"""The open-loop load generator's arithmetic (loadtests/openloop.py): arrival schedules, percentiles,
goodput, the knee search, the JSONL line. Its traffic is tested in tests/api/test_openloop.py."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from loadtests import openloop as ol

# --------------------------------------------------------------------------- schedules


def intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in zip([0.0, *times], times, strict=False)]


def test_constant_arrivals_are_evenly_spaced_at_the_rate():
    times = ol.schedule(4.0, 10.0, arrivals="constant")
    assert len(times) == 40
    assert times[0] == 0.0
    assert all(abs(b - a - 0.25) < 1e-12 for a, b in zip(times, times[1:], strict=False))
    assert all(0 <= t < 10.0 for t in times)
    # A fractional count rounds up: 2.5 req/s over 3 s is 0, 0.4, ..., 2.8 (8 requests).
    assert len(ol.schedule(2.5, 3.0, arrivals="constant")) == 8


def test_poisson_arrivals_have_the_rate_mean_and_exponential_variance():
    rate = 50.0
    times = ol.schedule(rate, 400.0, arrivals="poisson", seed=1)
    gaps = intervals(times)
    n = len(times)
    # Count: Poisson with mean 20000 -> sd 141; 5 sd either side.
    assert abs(n - rate * 400) < 5 * (rate * 400) ** 0.5
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # Exponential intervals: variance = mean^2 (coefficient of variation 1).
    assert statistics.pvariance(gaps) == pytest.approx((1 / rate) ** 2, rel=0.06)
    # Counts per 1-s window: variance = mean (index of dispersion 1).
    counts = np.bincount(np.floor(times).astype(int), minlength=400)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.2)
    assert all(0 < t < 400.0 for t in times) and times == sorted(times)


@pytest.mark.parametrize("burstiness", [0.25, 0.5, 4.0])
def test_gamma_burstiness_keeps_the_mean_and_sets_the_variance(burstiness):
    rate = 20.0
    gaps = intervals(ol.schedule(rate, 1000.0, arrivals="gamma", burstiness=burstiness, seed=3))
    mean = statistics.fmean(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.05)
    # Squared coefficient of variation of gamma(shape k) intervals is 1/k.
    cv2 = statistics.pvariance(gaps) / mean**2
    assert cv2 == pytest.approx(1 / burstiness, rel=0.15)


def test_burstier_arrivals_bunch_up_more_than_poisson():
    def dispersion(times):
        counts = np.bincount(np.floor(np.asarray(times)).astype(int), minlength=500)
        return counts.var() / counts.mean()

    bursty = dispersion(ol.schedule(10.0, 500.0, arrivals="gamma", burstiness=0.2, seed=5))
    poisson = dispersion(ol.schedule(10.0, 500.0, arrivals="poisson", seed=5))
    smooth = dispersion(ol.schedule(10.0, 500.0, arrivals="gamma", burstiness=8.0, seed=5))
    assert bursty > 2 * poisson > 4 * smooth


def test_gamma_with_burstiness_one_is_poisson():
    assert ol.schedule(5.0, 30.0, arrivals="gamma", burstiness=1.0, seed=2) != []
    gaps = intervals(ol.schedule(5.0, 2000.0, arrivals="gamma", burstiness=1.0, seed=2))
    cv2 = statistics.pvariance(gaps) / statistics.fmean(gaps) ** 2
    assert cv2 == pytest.approx(1.0, rel=0.1)


def test_schedules_are_reproducible_by_seed():
    a = ol.schedule(8.0, 20.0, arrivals="poisson", seed=7)
    assert a == ol.schedule(8.0, 20.0, arrivals="poisson", seed=7)
    assert a != ol.schedule(8.0, 20.0, arrivals="poisson", seed=8)
    g = ol.schedule(8.0, 20.0, arrivals="gamma", burstiness=0.5, seed=7)
    assert g == ol.schedule(8.0, 20.0, arrivals="gamma", burstiness=0.5, seed=7)
    assert g != a


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": 0.0, "duration_s": 1.0},
        {"rate": -1.0, "duration_s": 1.0},
        {"rate": float("inf"), "duration_s": 1.0},
        {"rate": 1.0, "duration_s": 0.0},
        {"rate": 1.0, "duration_s": 1.0, "arrivals": "uniform"},
        {"rate": 1.0, "duration_s": 1.0, "arrivals": "gamma", "burstiness": 0.0},
        {"rate": 1.0, "duration_s": 1.0, "arrivals": "poisson", "burstiness": 2.0},
        {"rate": 1.0, "duration_s": 1.0, "arrivals": "constant", "burstiness": 0.5},
    ],
)
def test_bad_schedules_are_refused(kwargs):
    with pytest.raises(ValueError):
        ol.schedule(**kwargs)


# --------------------------------------------------------------------------- percentiles


@pytest.mark.parametrize("q", [0, 1, 50, 90, 95, 99, 99.9, 100])
def test_percentile_matches_numpys_linear_interpolation(q):
    values = list(np.random.default_rng(0).lognormal(3, 1, size=257))
    assert ol.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges():
    assert ol.percentile([], 50) is None
    assert ol.percentile([7.0], 99) == 7.0
    assert ol.percentile([1.0, 2.0], 50) == 1.5
    assert ol.percentile([3.0, 1.0, 2.0], 100) == 3.0  # order does not matter
    with pytest.raises(ValueError):
        ol.percentile([1.0], 101)
    assert ol.percentiles([0.001, 0.002], scale=1000) == {"p50": 1.5, "p90": 1.9, "p95": 1.95, "p99": 1.99}


# --------------------------------------------------------------------------- goodput and the row


def rec(i: int, *, ttft: float | None = 100.0, itl: float | None = 10.0, status: str = "ok", end: float = 0.0, **kw):
    r = ol.Record(level=0, rate=2.0, i=i, scheduled_s=i * 0.5, sent_s=i * 0.5 + 0.001, status=status, end_s=end)
    r.ttft_ms, r.itl_ms, r.e2e_ms, r.output_tokens = ttft, itl, 500.0, 10
    r.late_ms = 1.0
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_slo_judges_ttft_itl_and_status():
    slo = ol.SLO(ttft_ms=200, itl_ms=20)
    assert slo.met(rec(0))
    assert not slo.met(rec(0, ttft=201))
    assert not slo.met(rec(0, itl=20.5))
    assert not slo.met(rec(0, status="http_error"))
    assert not slo.met(rec(0, ttft=None))  # ok but no TTFT: cannot be judged good on TTFT
    assert slo.met(rec(0, itl=None))  # one output token: no ITL to judge
    assert ol.SLO().met(rec(0, ttft=10_000, itl=10_000))  # no SLO: every success is good
    assert not ol.SLO().met(rec(0, status="timeout"))


def level_of(records, duration=5.0, cpu=0.5, wall=10.0, peak=3):
    return ol.Level(0, 2.0, duration, records, cpu, wall, peak)


def test_row_goodput_throughput_and_percentiles():
    # 10 requests scheduled over 5 s; 8 ok ending 1 s apart (achieved 1 req/s over the 7-s span), 2 failed;
    # of the ok ones, 2 miss the TTFT SLO and 1 the ITL SLO -> 5 good.
    records = [rec(i, end=1.0 + i, ttft=100.0 + i) for i in range(8)]
    records[1].ttft_ms = 900.0
    records[2].ttft_ms = 950.0
    records[3].itl_ms = 80.0
    records += [rec(8, status="http_error", error="boom", http_status=500), rec(9, status="timeout", error="slow")]
    row = ol.summarize(level_of(records), ol.SLO(ttft_ms=500, itl_ms=50), max_outstanding=64)
    assert row["scheduled"] == 10 and row["ok"] == 8 and row["errors"] == 2
    assert row["offered_rps"] == 2.0
    assert row["achieved_rps"] == 1.0 and row["achieved_ratio"] == 0.5
    assert row["good"] == 5
    assert row["goodput_share"] == 0.5  # 5 good of 10 scheduled
    assert row["goodput_rps"] == 0.625  # achieved x 5 / 8
    assert row["output_tok_s"] == 10.0  # 7 requests x 10 tokens finished after the first, over 7 s
    assert [r.good for r in records] == [True, False, False, False, True, True, True, True, False, False]
    ttfts = [r.ttft_ms for r in records[:8]]
    assert row["ttft_ms"]["p50"] == round(float(np.percentile(ttfts, 50)), 2)
    assert row["ttft_ms"]["p99"] == round(float(np.percentile(ttfts, 99)), 2)
    assert row["drain_s"] == 3.0  # last ok end (8 s) - 5 s of arrivals
    assert row["client_cpu_pct"] == 5.0 and row["peak_outstanding"] == 3 and row["max_outstanding"] == 64
    assert row["error_kinds"] == {"http_error: boom": 1, "timeout: slow": 1}
    assert ol.level_passes(row, 0.9, 0.9) is False
    assert ol.level_passes(row, 0.5, 0.5) is True


def test_throughput_follows_arrivals_whatever_the_latency():
    # A server keeping up at 2 req/s: answers end 0.5 s apart, each 3 s after it was sent.
    records = [rec(i, end=i * 0.5 + 3.0) for i in range(10)]
    row = ol.summarize(level_of(records), ol.SLO())
    assert row["achieved_rps"] == 2.0 and row["achieved_ratio"] == 1.0
    assert row["goodput_share"] == 1.0
    assert ol.level_passes(row, 0.9, 0.9)


def test_a_short_poisson_level_that_kept_up_is_judged_against_its_own_arrivals():
    # 1 req/s for 8 s draws few requests, spread over less than 8 s; every answer takes 0.3 s.
    times = ol.schedule(1.0, 8.0, arrivals="poisson", seed=1)
    records = []
    for i, t in enumerate(times):
        r = rec(i, end=t + 0.3)
        r.scheduled_s = t
        records.append(r)
    row = ol.summarize(level_of(records, duration=8.0), ol.SLO())
    assert row["achieved_ratio"] == 1.0
    assert row["achieved_rps"] == row["arrival_rps"] != row["offered_rps"]
    assert ol.level_passes(row, 0.9, 0.9)


def test_capped_requests_are_counted_and_kept_out_of_client_lateness():
    records = [rec(i, end=1.0 + i) for i in range(6)]
    for r in records[3:]:
        r.capped, r.late_ms = True, 400.0
    records[0].late_ms = 2.0
    row = ol.summarize(level_of(records), ol.SLO(), max_outstanding=3)
    assert row["capped"] == 3
    assert row["late_ms"]["max"] == 2.0  # the client's own lateness, not the cap's
    assert row["capped_late_max_ms"] == 400.0
    warnings = ol.warnings_for(row, max_late_ms=10, max_client_cpu_pct=80)
    assert len(warnings) == 1 and "3 of 6 requests waited" in warnings[0] and "--max-outstanding 3" in warnings[0]


def test_warnings_for_a_late_or_busy_client():
    records = [rec(i, end=1.0 + i) for i in range(5)]
    records[4].late_ms = 50.0
    row = ol.summarize(level_of(records, cpu=9.0, wall=10.0), ol.SLO())
    warnings = ol.warnings_for(row, max_late_ms=10, max_client_cpu_pct=80)
    assert any("sent requests late" in w for w in warnings)
    assert any("90.0% of a core" in w for w in warnings)
    assert ol.warnings_for(ol.summarize(level_of([rec(i, end=i) for i in range(5)]), ol.SLO()), 10, 80) == []


def test_row_of_a_level_where_nothing_succeeded():
    row = ol.summarize(level_of([rec(0, status="connection_error", error="refused")]), ol.SLO(ttft_ms=1))
    assert row["ok"] == 0 and row["achieved_rps"] is None and row["goodput_rps"] is None
    assert row["goodput_share"] == 0.0 and row["ttft_ms"]["p50"] is None
    assert not ol.level_passes(row, 0.9, 0.9)
    assert "| 2 |" in ol.table([row])  # the table prints it, with dashes for what is missing


# --------------------------------------------------------------------------- per-request timing and JSONL


def test_finish_timing_takes_ttft_itl_and_gaps_from_chunk_times():
    r = ol.Record(level=0, rate=1.0, i=0, scheduled_s=0.0)
    ol.finish_timing(r, sent=10.0, content_times=[10.2, 10.21, 10.23, 10.5], end=10.6, tokens=7)
    assert r.ttft_ms == pytest.approx(200.0)
    assert r.itl_ms == pytest.approx(300.0 / 6)  # (last - first content) / (tokens - 1): 4 chunks carried 7 tokens
    assert r.itl_max_ms == pytest.approx(270.0)
    assert r.e2e_ms == pytest.approx(600.0)
    assert r.output_tokens == 7 and r.chunks == 4
    # Without usage, tokens are the chunks; one token has no ITL.
    one = ol.Record(level=0, rate=1.0, i=1, scheduled_s=0.0)
    ol.finish_timing(one, sent=0.0, content_times=[0.1], end=0.2, tokens=None)
    assert one.output_tokens == 1 and one.itl_ms is None and one.itl_max_ms is None


def test_jsonl_line_has_every_field_and_no_gaps():
    r = rec(3, end=2.5)
    r.gaps = [0.01, 0.02]
    line = json.loads(json.dumps(r.line()))
    assert set(line) == {
        "level", "rate", "i", "scheduled_s", "sent_s", "late_ms", "capped", "ttft_ms", "itl_ms", "itl_max_ms",
        "e2e_ms", "end_s", "prompt_tokens", "output_tokens", "chunks", "status", "http_status", "error", "good",
    }  # fmt: skip
    assert line["scheduled_s"] == 1.5 and line["status"] == "ok" and line["ttft_ms"] == 100.0


@pytest.mark.parametrize(
    "payload, content, usage",
    [
        (b'{"choices":[{"delta":{"role":"assistant","content":""}}]}', False, False),
        (b'{"choices":[{"delta":{"content":"hi"}}]}', True, False),
        (b'{"choices":[{"delta": {"content": "hi"}}], "usage": null}', True, False),
        (b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}', False, True),
        (b'{"choices":[{"delta":{"content":null}}], "usage": {"completion_tokens":1}}', False, True),
    ],
)
def test_chunk_bytes_are_read_without_decoding(payload, content, usage):
    assert ol.has_content(payload) is content
    assert ol.has_usage(payload) is usage


# --------------------------------------------------------------------------- the knee search and the CLI


def run_search(capacity: float, start: float = 1.0, max_rate: float = 64.0, refine: int = 2) -> tuple[list, str]:
    search = ol.KneeSearch(start, max_rate, refine)
    tried = []
    while (rate := search.next_rate()) is not None:
        tried.append(rate)
        search.add(rate, rate <= capacity)
    return tried, search.verdict()


def test_knee_search_doubles_then_bisects():
    tried, verdict = run_search(capacity=10.0)
    assert tried == [1, 2, 4, 8, 16, 12, 10]
    assert verdict == "knee between 10 req/s (kept up) and 12 req/s (did not)"


def test_knee_search_ends_at_the_max_rate_or_a_failing_start():
    tried, verdict = run_search(capacity=1000.0, max_rate=20.0)
    assert tried == [1, 2, 4, 8, 16, 20] and verdict.startswith("no knee up to 20")
    tried, verdict = run_search(capacity=0.5)
    assert tried == [1] and "already failed" in verdict
    with pytest.raises(ValueError):
        ol.KneeSearch(10.0, 5.0)


def test_cli_arguments(capsys):
    p = ol.build_parser()
    args = p.parse_args(
        ["--rates", "1,2.5,8", "--prompt-tokens", "32..64", "--arrivals", "gamma", "--burstiness", "0.5"]
    )
    ol.check_args(p, args)
    assert args.rates == [1.0, 2.5, 8.0]
    assert args.prompt_tokens == ol.parse_length("32..64") and args.prompt_tokens.kind == "uniform"
    for bad in (
        ["--rates", "1,0"],
        ["--rates", "x"],
        ["--prompt-tokens", "0"],
        ["--prompt-tokens", "9..3"],
        ["--rates", "1", "--find-knee"],
        [],
        ["--rates", "1", "--burstiness", "2"],
        ["--rates", "1", "--max-outstanding", "0"],
        ["--rates", "1", "--slo-ttft-ms", "0"],
    ):
        with pytest.raises(SystemExit):
            ol.check_args(p, p.parse_args(bad))
    capsys.readouterr()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--find-knee", "--start-rate", "10", "--max-rate", "5"], "--start-rate (10) cannot be above --max-rate (5)"),
        (["--rates", "1", "--arrivals", "gamma", "--burstiness", "inf"], "--burstiness must be a positive finite"),
        (["--rates", "1", "--arrivals", "gamma", "--burstiness", "nan"], "--burstiness must be a positive finite"),
        (["--rates", "1", "--duration", "inf"], "--duration must be a positive finite number"),
        (["--find-knee", "--max-rate", "inf"], "--max-rate must be a positive finite number"),
        (["--rates", "1", "--knee-ratio", "0"], "--knee-ratio is a share of the arrival rate: 0 < it <= 1, got 0"),
        (["--rates", "1", "--knee-ratio", "1.5"], "--knee-ratio is a share"),
        (["--rates", "1", "--knee-ratio", "nan"], "--knee-ratio is a share"),
        (["--rates", "1", "--min-goodput", "-0.1"], "--min-goodput is a share of the requests: 0 <= it <= 1"),
        (["--rates", "1", "--min-goodput", "90"], "--min-goodput is a share"),
        # one request per level has no throughput (it is measured between completions): it could only "fail"
        (["--rates", "0.5,4", "--duration", "3"], "the lowest of --rates x --duration is 0.5 x 3 = 1.5 requests"),
        (["--find-knee", "--start-rate", "0.1", "--duration", "10"], "--start-rate x --duration is 0.1 x 10 = 1"),
    ],
)
def test_cli_refuses_with_a_message_and_no_traceback(argv, message, capsys):
    """argparse's exit 2 and its usage line, before any request (the knee search or the schedule raised later)."""
    with pytest.raises(SystemExit) as info:
        ol.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_takes_the_edges_of_the_ranges():
    p = ol.build_parser()
    for ok in (
        ["--rates", "1", "--knee-ratio", "1", "--min-goodput", "0"],
        ["--rates", "2,4", "--duration", "1"],  # 2 requests at the lowest rate
        ["--find-knee", "--start-rate", "8", "--max-rate", "8"],
        ["--rates", "1", "--arrivals", "gamma", "--burstiness", "1e6"],
    ):
        ol.check_args(p, p.parse_args(ok))


def test_serve_url_follows_the_configs_ingress(tmp_path):
    from loadtests.servers import ROOT

    assert ol.serve_url(ROOT / "configs" / "dev.yaml") == "http://127.0.0.1:8000"
    proxy = tmp_path / "proxy.yaml"
    proxy.write_text(
        "http_options: {port: 8123}\napplications:\n  - name: llm\n    import_path: serving.deployments.app:build_app\n"
        "    args: {ingress: {mode: proxy}}\n"
    )
    assert ol.serve_url(proxy) == "http://127.0.0.1:8123"
