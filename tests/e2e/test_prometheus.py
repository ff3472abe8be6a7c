"""A real Prometheus against the dev stack: every dashboard query and every alert rule returns data after traffic.

The stack is dev.yaml on ports of its own, with a small queue (2 in the engine, 1 waiting) so
that a burst is refused with 503 queue_full, which the 5xx and queue-full alerts need. A
Prometheus (Debian's package: `apt-get install prometheus`) scrapes Ray's metrics endpoints
(the service-discovery file Ray writes, as observability/prometheus.yml reads it) and the
node's vLLM endpoint (serving/deployments/engine_metrics.py) every 2 s, with
observability/alerts.yml loaded as its rule file. Traffic goes in two rounds, so that every
counter and histogram series exists before it increases (a rate needs two samples).
Then, through Prometheus' HTTP API:

- every PromQL query of observability/grafana-dashboard.json, with its template variables
  substituted, returns at least one series, and one with a number (not NaN);
- every alert's query (its expression without the final threshold) does too, and the rule
  groups are loaded and healthy (`/api/v1/rules`);
- vLLM's own series arrive under their exact names with `replica` and `model` labels.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import subprocess
import time

import httpx
import pytest
import yaml
from openai import OpenAI

from loadtests.servers import ROOT, free_ports, start_in_own_group
from tests.e2e.conftest import dev_config, start_stack

DIRECT_PORT, PROXY_PORT, ENGINE_METRICS_PORT, PROM_PORT = free_ports(4)
URL = f"http://127.0.0.1:{DIRECT_PORT}"
PROM = f"http://127.0.0.1:{PROM_PORT}"
MODEL = "tiny-llama"
DASHBOARD = ROOT / "observability" / "grafana-dashboard.json"
ALERTS = ROOT / "observability" / "alerts.yml"
# What Grafana puts in for the dashboard's variables here: every model, a rate window of 1 minute.
VARIABLES = {"$model": ".*", "$__rate_interval": "1m"}
THRESHOLD = re.compile(r"\s*(>|<|>=|<=|==|!=)\s*[-+0-9.eE]+\s*$")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query with the variables substituted) for every target of every panel."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], expr))
    return out


def alert_queries() -> list[tuple[str, str]]:
    """(alert, its expression without the threshold): what must have data for the alert to be able to fire."""
    out = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            assert THRESHOLD.search(expr), f"{rule['alert']}: expected '<query> <comparison> <threshold>'"
            out.append((rule["alert"], THRESHOLD.sub("", expr)))
    return out


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = dev_config(DIRECT_PORT, PROXY_PORT)
    model = config["applications"][0]["args"]["models"][0]
    model["deployment"].update(max_ongoing_requests=2, max_queued_requests=1)
    model["deployment"]["autoscaling"]["target_ongoing_requests"] = 2
    log = tmp_path_factory.mktemp("serve") / "serve-prometheus.log"
    with start_stack(config, log, env={"SERVING_ENGINE_METRICS_PORT": str(ENGINE_METRICS_PORT)}) as server:
        yield server


@pytest.fixture(scope="module")
def prometheus(stack, tmp_path_factory):
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed (apt-get install -y prometheus; scripts/setup.sh does it)"
    work = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {
                "job_name": "ray",
                "file_sd_configs": [{"files": [str(stack.session_dir() / "prom_metrics_service_discovery.json")]}],
            },
            {"job_name": "vllm", "static_configs": [{"targets": [f"127.0.0.1:{ENGINE_METRICS_PORT}"]}]},
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (work / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{PROM_PORT}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=start_in_own_group,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (work / "prometheus.log").read_text()[-3000:]
            try:
                if httpx.get(f"{PROM}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def query(expr: str) -> list[dict]:
    r = httpx.get(f"{PROM}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def has_number(result: list[dict]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def summary(what: str, result: list[dict]) -> str:
    """One line per query for the test's output (`pytest -s`): its series and their values."""
    values = ", ".join(f"{float(r['value'][1]):.4g}" for r in result[:4])
    return f"{what[:72]:72} {len(result)} series: {values}"


def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


async def burst() -> list[int]:
    """More streams than 2 running + 1 waiting take: the rest are refused with 503 queue_full."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 200,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> int:
            async with client.stream("POST", f"{URL}/v1/chat/completions", json=body) as r:
                await r.aread()
                return r.status_code

        return list(await asyncio.gather(*(one() for _ in range(8))))


def traffic(client: OpenAI) -> None:
    for i in range(4):
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"tell me about prometheus {i}"}],
            max_tokens=16,
            extra_body={"ignore_eos": True},
        )
        stream = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"tell me about prometheus {i}"}],
            max_tokens=16,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        assert sum(1 for _ in stream) > 0
    # a client error (4xx) beside the server errors of the burst
    assert httpx.post(f"{URL}/v1/chat/completions", json={"model": "nope", "messages": []}, timeout=10).is_client_error
    statuses = asyncio.run(burst())
    assert 503 in statuses and 200 in statuses, statuses


@pytest.fixture(scope="module")
def scraped(stack, prometheus):
    """Two rounds of traffic, each after Prometheus saw the one before."""
    client = OpenAI(base_url=f"{URL}/v1", api_key="none", max_retries=0, timeout=60)
    traffic(client)
    wait_until(
        lambda: query('ray_serving_rejections_total{reason="queue_full"}') and query("vllm:num_requests_running"),
        120,
        "the first round in Prometheus",
    )
    traffic(client)
    wait_until(
        lambda: (
            has_number(query(f'sum(rate(ray_serving_rejections_total{{model="{MODEL}",reason="queue_full"}}[1m]))'))
            and float(query('sum(rate(ray_serving_rejections_total{reason="queue_full"}[1m]))')[0]["value"][1]) > 0
        ),
        120,
        "the second round in Prometheus",
    )
    return client


def test_vllm_metrics_have_their_own_names_and_our_labels(scraped):
    for name in (
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:inter_token_latency_seconds_count",
        "vllm:request_time_per_output_token_seconds_count",
        "vllm:time_to_first_token_seconds_count",
    ):
        result = query(f'{name}{{model="{MODEL}"}}')
        assert result, f"{name} is not in Prometheus"
        assert all(series["metric"].get("replica") for series in result), result
    # vLLM's per-token histogram counts every gap between tokens, ours (TPOT) one value per request
    tokens = float(query(f'sum(vllm:inter_token_latency_seconds_count{{model="{MODEL}"}})')[0]["value"][1])
    requests = float(query(f'sum(ray_serving_tpot_seconds_count{{model="{MODEL}"}})')[0]["value"][1])
    assert requests >= 8 and tokens >= 10 * requests, (tokens, requests)


def test_every_dashboard_query_returns_data(scraped):
    queries = dashboard_queries()
    assert len(queries) >= 20
    empty = {}

    def check():
        empty.clear()
        for title, expr in queries:
            result = query(expr)
            if not has_number(result):
                empty[title] = (expr, result)
        return not empty

    wait_until(lambda: check() or None, 60, "dashboard queries with data")
    assert not empty, json.dumps(empty, indent=1)
    for title, expr in queries:
        print(summary(f"{title} | {expr}", query(expr)))


def test_every_alert_rule_is_loaded_and_its_query_returns_data(scraped):
    queries = alert_queries()
    assert {name for name, _ in queries} >= {
        "LLMServingHigh5xxRate",
        "LLMServingQueueFull",
        "LLMServingTTFTOverSLO",
        "LLMServingKVCacheNearFull",
        "LLMServingReplicaUnhealthy",
    }
    for name, expr in queries:
        result = query(expr)
        assert has_number(result), f"{name}: {expr} returns no data"
        print(summary(name, result))
    rules = httpx.get(f"{PROM}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in rules for r in g["rules"]}
    assert set(loaded) == {name for name, _ in queries}
    for name, rule in loaded.items():
        assert rule["health"] == "ok", (name, rule.get("lastError"))
        assert rule["state"] in ("inactive", "pending", "firing")
    # with this burst, a third of the requests failed: the 5xx and queue-full alerts are pending (for: 5m)
    assert loaded["LLMServingQueueFull"]["state"] in ("pending", "firing"), loaded["LLMServingQueueFull"]
    assert loaded["LLMServingHigh5xxRate"]["state"] in ("pending", "firing"), loaded["LLMServingHigh5xxRate"]
