"""Metrics on Ray's Prometheus endpoint after a known set of requests, and the dashboard's queries."""

import json
import re
import time
from pathlib import Path

import httpx

from serving.observability.metrics import METRIC_NAMES
from tests.e2e.conftest import AUTH, DIRECT_URL, PROXY_URL

MODEL = "tiny-llama"
DASHBOARD = Path(__file__).resolve().parents[2] / "observability" / "grafana-dashboard.json"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)")


def scrape(server) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list[tuple[dict, float]]] = {}
    for url in server.metrics_urls():
        try:
            text = httpx.get(url, timeout=10).text
        except httpx.HTTPError:
            continue
        for line in text.splitlines():
            m = SAMPLE.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def total(samples, name, **labels) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == val for k, val in labels.items()))


def wait_for(server, predicate, timeout_s=40):
    """Ray exports metrics every few seconds: poll until they reflect what we sent."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(server)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(1)


def settled(server, key, quiet_s=12.0, timeout_s=90.0):
    """Scrape until key(samples) has not changed for quiet_s (longer than Ray's 10 s export
    interval): requests of earlier tests may still be on their way to the exporter, and a
    baseline taken before they land would count them as ours."""
    samples = scrape(server)
    value, since = key(samples), time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(2)
        samples = scrape(server)
        if key(samples) != value:
            value, since = key(samples), time.monotonic()
    return samples


def test_request_metrics_count_what_was_sent(dev_server):
    req_name = METRIC_NAMES["requests"]
    route = "/v1/chat/completions"

    def counters(s):
        return (
            total(s, req_name),
            total(s, METRIC_NAMES["ttft"] + "_count"),
            total(s, METRIC_NAMES["completion_tokens"]),
            total(s, METRIC_NAMES["rejections"]),
            total(s, METRIC_NAMES["tpot"] + "_count"),
        )

    before = settled(dev_server, counters)
    base_ok = total(before, req_name, model=MODEL, route=route, status="200")
    # an unknown model is not a label value (clients could mint unbounded series): "-"
    base_404 = total(before, req_name, model="-", route=route, status="404")
    base_ttft = total(before, METRIC_NAMES["ttft"] + "_count", model=MODEL)
    base_tokens = total(before, METRIC_NAMES["completion_tokens"], model=MODEL)
    base_auth = total(before, METRIC_NAMES["rejections"], reason="auth")
    base_tpot = total(before, METRIC_NAMES["tpot"] + "_count", model=MODEL)
    base_itl = total(before, "ray_serving_itl_seconds_count", model=MODEL)

    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "ignore_eos": True}
    for _i in range(3):
        assert httpx.post(f"{DIRECT_URL}{route}", json=body, headers=AUTH, timeout=30).status_code == 200
    for _i in range(2):
        assert (
            httpx.post(f"{DIRECT_URL}{route}", json={**body, "stream": True}, headers=AUTH, timeout=30).status_code
            == 200
        )
    assert (
        httpx.post(f"{DIRECT_URL}{route}", json={**body, "model": "nope"}, headers=AUTH, timeout=30).status_code == 404
    )
    assert httpx.post(f"{DIRECT_URL}{route}", json=body, timeout=30).status_code == 401

    def arrived(s):
        return (
            total(s, req_name, model=MODEL, route=route, status="200") >= base_ok + 5
            and total(s, METRIC_NAMES["ttft"] + "_count", model=MODEL) >= base_ttft + 5
            and total(s, METRIC_NAMES["rejections"], reason="auth") >= base_auth + 1
            and total(s, METRIC_NAMES["tpot"] + "_count", model=MODEL) >= base_tpot + 5
        )

    after = wait_for(dev_server, arrived)
    assert total(after, req_name, model=MODEL, route=route, status="200") - base_ok == 5
    assert total(after, req_name, model="-", route=route, status="404") - base_404 == 1
    assert not any(lab.get("model") == "nope" for lab, _ in after.get(req_name, []))
    assert total(after, METRIC_NAMES["rejections"], reason="auth") - base_auth == 1
    assert total(after, METRIC_NAMES["ttft"] + "_count", model=MODEL) - base_ttft == 5
    # TPOT: one value per request (of more than one token), under its new name and, for a release, its old one
    assert total(after, METRIC_NAMES["tpot"] + "_count", model=MODEL) - base_tpot == 5
    assert total(after, "ray_serving_itl_seconds_count", model=MODEL) - base_itl == 5
    assert total(after, METRIC_NAMES["completion_tokens"], model=MODEL) - base_tokens == 25
    # histogram buckets are cumulative and end with +Inf == count
    buckets = [(lab, v) for lab, v in after[METRIC_NAMES["ttft"] + "_bucket"] if lab.get("model") == MODEL]
    inf = sum(v for lab, v in buckets if lab["le"] == "+Inf")
    assert inf == total(after, METRIC_NAMES["ttft"] + "_count", model=MODEL)
    # engine gauges are exported per replica (the KV cache's as a ratio, and for a release under its old name)
    kv = after.get(METRIC_NAMES["kv_cache_usage"])
    assert kv and all(lab.get("replica") and 0 <= v <= 1 for lab, v in kv)
    assert after.get(METRIC_NAMES["engine"].format(stat="kv_cache_usage"))
    assert any(lab.get("replica") for lab, _ in after[METRIC_NAMES["in_flight"]])


def test_dashboard_queries_name_exported_metrics(dev_server):
    """Every metric of Ray's endpoints a dashboard query names is exported by the running stack (vLLM's own,
    `vllm:*`, come from the node's engine-metrics port: tests/e2e/test_prometheus.py)."""
    # make sure the proxy path and the e2e histograms have samples too
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    httpx.post(f"{PROXY_URL}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(exprs) >= 8
    names = set()
    for expr in exprs:
        for token in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            if token.startswith(("ray_serving_", "ray_serve_")):
                names.add(token)
    assert names, "the dashboard names no metric"

    def exported(name, samples):
        return name in samples

    samples = wait_for(dev_server, lambda s: all(exported(n, s) for n in names), timeout_s=40)
    missing = sorted(n for n in names if not exported(n, samples))
    assert not missing, f"dashboard queries name metrics the stack does not export: {missing}"
