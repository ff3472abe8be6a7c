"""The dashboard and the alert rules as files: what can be checked without a Prometheus running.

tests/e2e/test_prometheus.py runs every query against a real Prometheus scraping the dev
stack; here: every line of a panel can be told apart in its legend, a legend names only
labels its query keeps, client and server errors are apart, target and running replicas are
shown, every metric named is one the stack exports, and `promtool` accepts the queries and
the rule file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from serving.observability.metrics import DEPRECATED_NAMES, METRIC_NAMES

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "observability" / "grafana-dashboard.json").read_text())
ALERTS_PATH = ROOT / "observability" / "alerts.yml"
ALERTS = yaml.safe_load(ALERTS_PATH.read_text())
PANELS = DASHBOARD["panels"]
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
# The Ray Serve metrics the dashboard and the alerts read (Ray's controller exports them).
RAY_SERVE = {"ray_serve_autoscaling_target_replicas", "ray_serve_deployment_replica_healthy"}
# vLLM's own metrics the dashboard and alerts read (exported by serving/deployments/engine_metrics.py)
VLLM = {
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
    "vllm:num_preemptions_total",
}


def exported() -> set[str]:
    names = set(RAY_SERVE) | VLLM
    for name in METRIC_NAMES.values():
        if "{" in name:
            continue
        names |= {name, name + "_bucket", name + "_sum", name + "_count"}
    return names


def metric_names(expr: str) -> set[str]:
    return {t for t in NAME.findall(expr) if t.startswith(("ray_", "vllm:"))}


def by_labels(expr: str) -> set[str]:
    """Labels every line of the query keeps: those of its outermost `by (...)`s."""
    groups = re.findall(r"\bby \(([^)]*)\)", expr)
    kept = [{label.strip() for label in g.split(",")} - {"le"} for g in groups]
    return set.intersection(*kept) if kept else set()


def targets():
    for panel in PANELS:
        for target in panel["targets"]:
            yield panel, target


def test_every_line_of_a_panel_has_a_legend_of_its_own():
    for panel in PANELS:
        legends = [t["legendFormat"] for t in panel["targets"]]
        assert len(set(legends)) == len(legends), (panel["title"], legends)


def test_a_legend_names_only_labels_its_query_keeps():
    for panel, target in targets():
        named = set(re.findall(r"\{\{(\w+)\}\}", target["legendFormat"]))
        assert named, (panel["title"], target["legendFormat"])
        assert named <= by_labels(target["expr"]), (panel["title"], target["expr"], target["legendFormat"])


def test_quantile_lines_say_their_quantile():
    for _panel, target in targets():
        match = re.match(r"histogram_quantile\(([0-9.]+),", target["expr"])
        if match:
            assert f"p{round(float(match.group(1)) * 100)}" in target["legendFormat"], target


def test_client_and_server_errors_are_apart():
    status_filters = [re.findall(r'status=~"(\d)\.\."', t["expr"]) for _, t in targets()]
    assert all(len(set(f)) <= 1 for f in status_filters)
    panels = {
        p["title"]: {f for t in p["targets"] for f in re.findall(r'status=~"(\d)\.\."', t["expr"])} for p in PANELS
    }
    assert any(f == {"4"} for f in panels.values()) and any(f == {"5"} for f in panels.values())
    assert not any('status!="200"' in t["expr"] for _, t in targets())


def test_target_and_running_replicas_are_shown_together():
    for panel in PANELS:
        names = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
        if RAY_SERVE <= names:
            return
    raise AssertionError("no panel shows target against running replicas")


def test_the_per_token_itl_is_beside_the_per_request_tpot():
    names = set().union(*(metric_names(t["expr"]) for _, t in targets()))
    assert {"vllm:inter_token_latency_seconds_bucket", "ray_serving_tpot_seconds_bucket"} <= names


def test_dashboard_and_alerts_name_only_exported_metrics_and_no_deprecated_one():
    exprs = [t["expr"] for _, t in targets()] + [r["expr"] for g in ALERTS["groups"] for r in g["rules"]]
    names = set().union(*(metric_names(e) for e in exprs))
    assert names <= exported(), sorted(names - exported())
    assert not names & set(DEPRECATED_NAMES)


def test_the_alerts_the_issue_asks_for():
    rules = {r["alert"]: r for g in ALERTS["groups"] for r in g["rules"]}
    assert set(rules) == {
        "LLMServingHigh5xxRate",
        "LLMServingQueueFull",
        "LLMServingTTFTOverSLO",
        "LLMServingKVCacheNearFull",
        "LLMServingReplicaUnhealthy",
    }
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert re.fullmatch(r"\d+m", rule["for"]), name
        # tests/e2e/test_prometheus.py strips the threshold to check that the query returns data
        assert re.search(r"(>|<)\s*[0-9.]+\s*$", rule["expr"].strip()), name
    assert 'reason="queue_full"' in rules["LLMServingQueueFull"]["expr"]
    assert 'status=~"5.."' in rules["LLMServingHigh5xxRate"]["expr"]


def test_promtool_accepts_the_rule_file_and_every_dashboard_query(tmp_path):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (apt-get install prometheus; scripts/setup.sh does it)"
    check = subprocess.run([promtool, "check", "rules", str(ALERTS_PATH)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # the dashboard's queries as recording rules: promtool parses each
    rules = [
        {"record": f"dashboard:query_{i}", "expr": t["expr"].replace("$model", ".*").replace("$__rate_interval", "1m")}
        for i, (_, t) in enumerate(targets())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
