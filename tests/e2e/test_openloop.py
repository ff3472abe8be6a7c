"""A short open-loop rate sweep (`python -m loadtests.openloop`) against the dev stack: real Ray Serve, real vLLM.

Two Poisson levels the tiny model keeps up with, through the direct ingress with
an API key, as a user runs it from the command line. Checked: one row per level,
every scheduled request sent and answered with exactly the tokens asked for,
the JSONL agreeing with the rows (goodput recounted from its lines), the
achieved rate following the offered one, and a client that sent on time.
"""

from __future__ import annotations

import json
import subprocess
import sys

from loadtests.servers import ROOT
from tests.e2e.conftest import API_KEY, DIRECT_URL

RATES = [1.0, 3.0]
SLO_TTFT_MS, SLO_ITL_MS = 3000.0, 500.0
FIELDS = {
    "level", "rate", "i", "scheduled_s", "sent_s", "late_ms", "capped", "ttft_ms", "itl_ms", "itl_max_ms", "e2e_ms",
    "end_s", "prompt_tokens", "output_tokens", "chunks", "status", "http_status", "error", "good",
}  # fmt: skip


def test_a_rate_sweep_against_the_dev_stack(dev_server, tmp_path):
    cmd = [
        sys.executable, "-m", "loadtests.openloop",
        "--host", DIRECT_URL, "--api-key", API_KEY,
        "--rates", ",".join(f"{r:g}" for r in RATES), "--duration", "8", "--arrivals", "poisson", "--seed", "1",
        "--prompt-tokens", "32", "--output-tokens", "16", "--warmup", "2", "--cooldown", "1",
        "--slo-ttft-ms", str(SLO_TTFT_MS), "--slo-itl-ms", str(SLO_ITL_MS),
        "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    rows = summary["rows"]
    assert [r["rate"] for r in rows] == RATES
    assert len(lines) == sum(r["scheduled"] for r in rows)
    for row in rows:
        mine = [x for x in lines if x["level"] == row["level"]]
        assert set(mine[0]) == FIELDS
        assert row["scheduled"] == row["sent"] == row["ok"] == len(mine) > 0, row["error_kinds"]
        assert all(x["status"] == "ok" and x["http_status"] == 200 and x["error"] is None for x in mine)
        # ignore_eos: vLLM generates exactly the tokens asked for, counted by its usage.
        assert {x["output_tokens"] for x in mine} == {16}
        assert all(x["prompt_tokens"] > 0 and 0 < x["ttft_ms"] <= x["e2e_ms"] and x["itl_ms"] > 0 for x in mine)
        # Goodput recounted from the lines: ok, TTFT and mean ITL within the SLOs.
        good = [x for x in mine if x["ttft_ms"] <= SLO_TTFT_MS and x["itl_ms"] <= SLO_ITL_MS]
        assert row["good"] == len(good) == sum(x["good"] for x in mine)
        assert row["goodput_share"] == round(len(good) / len(mine), 4)
        assert row["goodput_share"] >= 0.9, row
        for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
            p = row[metric]
            assert 0 < p["p50"] <= p["p90"] <= p["p95"] <= p["p99"], (metric, p)
        # The tiny model keeps up at these rates: completions follow arrivals.
        assert row["achieved_ratio"] >= 0.75, row
        assert row["passed"] and row["capped"] == 0
        # Requests went out at their scheduled times (the client was not the bottleneck).
        assert row["late_ms"]["p99"] < 250, row["late_ms"]
        assert all(x["sent_s"] >= x["scheduled_s"] for x in mine)
    assert summary["knee"] == "every level kept up (up to 3 req/s)"
    assert "| 3 |" in (tmp_path / "table.md").read_text()
