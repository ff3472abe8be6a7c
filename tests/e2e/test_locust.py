"""The locust load test end to end: a short headless run of `python -m loadtests.run`
against the dev server, its outputs, and the SLO gate's exit codes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import API_KEY, DIRECT_URL

ROOT = Path(__file__).resolve().parents[2]
DURATION_S = 15


def run_py(*args: str, timeout: float = 80) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loadtests.run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def load_run(dev_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("locust") / "chat"
    proc = run_py(
        "--scenario", "chat",
        "--users", "3",
        "--spawn-rate", "3",
        "--duration", f"{DURATION_S}s",
        "--stop-timeout", "5s",
        "--host", DIRECT_URL,
        "--model", "tiny-llama",
        "--api-key", API_KEY,
        "--out", str(out),
        "--slo-ttft-p95-ms", "5000",
        "--slo-itl-p95-ms", "1000",
        "--slo-error-rate", "0",
    )  # fmt: skip
    return out, proc


def stats_rows(out) -> dict[tuple[str, str], dict]:
    with open(out / "locust_stats.csv", newline="") as f:
        return {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}


def test_run_meets_generous_slos(load_run):
    out, proc = load_run
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\nlog:\n{_log(out)}"
    assert "TTFT ms" in proc.stdout and "ITL ms" in proc.stdout and "SLOs met" in proc.stdout


def test_requests_made_without_failures(load_run):
    out, proc = load_run
    rows = stats_rows(out)
    requests = [r for (t, n), r in rows.items() if t == "POST" and not n.startswith("setup:")]
    assert requests, rows.keys()
    assert sum(int(r["Request Count"]) for r in requests) > 0
    assert sum(int(r["Failure Count"]) for r in rows.values()) == 0, (out / "locust_failures.csv").read_text()
    # The chat scenario mixes streaming and non-streaming chat and completions.
    names = {r["Name"] for r in requests}
    assert {"chat:stream", "completions:stream"} <= names, names


@pytest.mark.parametrize("metric", ["ttft", "itl", "tokens_per_s"])
def test_llm_metrics_in_stats_csv(load_run, metric):
    out, _ = load_run
    row = stats_rows(out).get(("METRIC", metric))
    assert row is not None, f"no METRIC {metric} row in locust_stats.csv"
    assert int(row["Request Count"]) > 0
    p50 = float(row["50%"])
    avg = float(row["Average Response Time"])
    if metric == "tokens_per_s":  # tokens/s, not ms; the content size column is tokens per request
        assert p50 > 0 and avg > 0
        assert float(row["Average Content Size"]) >= 1
    elif metric == "ttft":
        assert 0 < p50 < 5000, row
    else:  # ITL of the tiny model can be ~1 ms: locust buckets values < 100 ms to whole ms
        assert 0 <= p50 < 5000 and 0 < avg < 5000, row


def test_history_has_metric_rows(load_run):
    out, _ = load_run
    with open(out / "locust_stats_history.csv", newline="") as f:
        names = {(r["Type"], r["Name"]) for r in csv.DictReader(f)}
    assert {("METRIC", "ttft"), ("METRIC", "itl"), ("METRIC", "tokens_per_s")} <= names


def test_outputs_written(load_run):
    out, _ = load_run
    for name in ["locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "report.html"]:
        assert (out / name).stat().st_size > 0, name
    assert "ttft" in (out / "report.html").read_text()
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0
    assert 0 < summary["ttft_ms"]["p50"] < 5000
    assert summary["itl_ms"]["count"] > 0
    assert summary["tokens_per_s"]["aggregate"] > 0
    assert summary["slo"]["passed"] is True and summary["exit_code"] == 0


def test_impossible_slo_exits_1(load_run, tmp_path):
    # Judge a copy of the same run's CSVs: no second load run, the original summary stays.
    src, _ = load_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    proc = run_py("--check-only", str(out), "--slo-ttft-p95-ms", "0.001", "--slo-error-rate", "0.5", "--no-chart")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    missed = [line for line in proc.stdout.splitlines() if line.startswith("SLO MISSED")]
    assert len(missed) == 1 and "TTFT p95" in missed[0], proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slo"]["passed"] is False and summary["exit_code"] == 1


def test_unreachable_host_is_not_a_pass(tmp_path):
    # Nothing listens there: setup fails, no request succeeds, the run is reported unusable.
    proc = run_py(
        "--duration", "3s", "--users", "1", "--host", "http://127.0.0.1:9", "--out", str(tmp_path), "--no-chart"
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr


def _log(out) -> str:
    try:
        return "\n".join((out / "locust.log").read_text().splitlines()[-40:])
    except OSError:
        return ""
