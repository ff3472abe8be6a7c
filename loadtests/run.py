"""Headless load test with a summary, a chart and an SLO gate.

    python -m loadtests.run --scenario chat --users 32 --spawn-rate 8 --duration 60s \\
        --host http://localhost:8000 --out loadtests/results/chat-32 \\
        --slo-ttft-p95-ms 500 --slo-itl-p95-ms 100 --slo-error-rate 0.01

Runs `python -m locust -f loadtests/locustfile.py --headless ...` as a subprocess, then
reads its CSVs and writes into --out:

    locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv
    report.html     locust's HTML report
    locust.log      locust's own output
    summary.json    the numbers printed below plus every stats row and the SLO verdict
    chart.png       latency percentiles and throughput over time

`--check-only DIR` skips the load and judges the CSVs already in DIR (e.g. with other SLOs).
Arguments after `--` go to locust unchanged (e.g. `-- --processes 2`).

Exit codes: 0 = ran and every SLO given was met; 1 = at least one SLO missed (each is
listed); 2 = the run itself is unusable (locust failed or crashed, no CSVs, no
successful request, bad arguments).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from loadtests.scenarios import SCENARIOS

LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
PREFIX = "locust"
METRIC = "METRIC"
EXIT_OK, EXIT_SLO, EXIT_BROKEN = 0, 1, 2


class Broken(Exception):
    """The run cannot be judged."""


# --------------------------------------------------------------------------- arguments


def parse_timespan(text: str) -> int:
    """'90', '90s', '2m', '1h30m' -> seconds."""
    text = str(text).strip().lower()
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (use e.g. 60, 60s, 2m, 1h30m)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.run",
        description="Run a locust scenario headless against the OpenAI API, summarize it and gate on SLOs.",
        epilog="Exit codes: 0 SLOs met, 1 SLO missed, 2 run unusable. Arguments after -- go to locust.",
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS), default="chat")
    p.add_argument("--users", type=int, default=8, help="concurrent users (peak users for burst/step)")
    p.add_argument("--spawn-rate", type=float, default=4, help="users started per second")
    p.add_argument("--duration", type=parse_timespan, default=parse_timespan("60s"), help="e.g. 60s, 5m")
    p.add_argument(
        "--stop-timeout",
        type=parse_timespan,
        default=10,
        help="at the end, let in-flight requests finish for up to this long (seconds or 10s)",
    )
    p.add_argument("--host", default="http://localhost:8000", help="server base URL (without /v1)")
    p.add_argument("--out", type=Path, help="output directory (default: loadtests/results/<scenario>-<time>)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="default: $OPENAI_API_KEY")
    p.add_argument("--model", default="", help="model id (default: first of GET /v1/models)")
    p.add_argument("--models", default="", help="comma-separated models for the mix scenario")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--itl-mode", choices=["mean", "chunk"], default="mean")
    p.add_argument("--tokens-per-word", default="auto")
    p.add_argument("--max-context", type=int, default=2048)
    p.add_argument("--no-ignore-eos", action="store_true")
    slo = p.add_argument_group("SLOs (each optional; a missed one makes the exit code 1)")
    slo.add_argument("--slo-ttft-p95-ms", type=float, help="95th percentile time to first token, ms")
    slo.add_argument("--slo-itl-p95-ms", type=float, help="95th percentile inter-token latency, ms")
    slo.add_argument("--slo-error-rate", type=float, help="max failed/sent requests, e.g. 0.01")
    slo.add_argument("--slo-min-tokens-per-s", type=float, help="min aggregate output tokens/s of the run")
    p.add_argument("--check-only", type=Path, metavar="DIR", help="no load: judge the CSVs already in DIR")
    p.add_argument("--no-chart", action="store_true", help="skip chart.png")
    return p


def locust_command(args, out: Path, extra: list[str]) -> list[str]:
    cmd = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host", args.host,
        "--users", str(args.users),
        "--spawn-rate", str(args.spawn_rate),
        "--run-time", f"{args.duration}s",
        "--stop-timeout", f"{args.stop_timeout}s",
        "--csv", str(out / PREFIX),
        "--csv-full-history",
        "--html", str(out / "report.html"),
        "--scenario", args.scenario,
        "--seed", str(args.seed),
        "--itl-mode", args.itl_mode,
        "--tokens-per-word", str(args.tokens_per_word),
        "--max-context", str(args.max_context),
    ]  # fmt: skip
    if args.model:
        cmd += ["--model", args.model]
    if args.models:
        cmd += ["--models", args.models]
    if args.no_ignore_eos:
        cmd.append("--no-ignore-eos")
    return cmd + extra


def run_locust(args, out: Path, extra: list[str]) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cmd = locust_command(args, out, extra)
    env = dict(os.environ)
    if args.api_key:
        env["OPENAI_API_KEY"] = args.api_key  # not on the command line, where `ps` would show it
    log_path = out / "locust.log"
    print(
        f"locust: scenario {args.scenario}, {args.users} users @ {args.spawn_rate}/s for {args.duration}s "
        f"against {args.host} (log: {log_path})",
        flush=True,
    )
    deadline = args.duration + args.stop_timeout + 120
    with open(log_path, "w") as log:
        log.write(" ".join(cmd) + "\n\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            return proc.wait(timeout=deadline)
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)  # locust writes its stats on SIGTERM
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print(f"locust still running after {deadline}s: stopping it", file=sys.stderr)
            proc.send_signal(signal.SIGTERM)
            try:
                return proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                return proc.wait()


# --------------------------------------------------------------------------- CSVs


def _num(value) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def read_stats(out: Path) -> list[dict]:
    path = out / f"{PREFIX}_stats.csv"
    if not path.exists():
        raise Broken(f"{path} not found: locust did not run (see {out / 'locust.log'})")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_history(out: Path) -> list[dict]:
    path = out / f"{PREFIX}_stats_history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_exceptions(out: Path) -> list[dict]:
    path = out / f"{PREFIX}_exceptions.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_failures(out: Path) -> list[dict]:
    path = out / f"{PREFIX}_failures.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda r: -int(r.get("Occurrences") or 0))


def is_request(row: dict) -> bool:
    return row["Type"] not in (METRIC, "") and row["Name"] != "Aggregated" and not row["Name"].startswith("setup:")


def is_setup(row: dict) -> bool:
    return row["Name"].startswith("setup:")


def percentiles(row: dict | None) -> dict:
    if row is None or not int(row["Request Count"]):
        return {}
    result = {
        "count": int(row["Request Count"]),
        "avg": _num(row["Average Response Time"]),
        "min": _num(row["Min Response Time"]),
        "max": _num(row["Max Response Time"]),
    }
    for col, value in row.items():
        if col.endswith("%"):
            result["p" + col[:-1].replace(".", "_")] = _num(value)
    return result


# --------------------------------------------------------------------------- summary


def summarize(rows: list[dict], exceptions: list[dict]) -> dict:
    by_name = {(r["Type"], r["Name"]): r for r in rows}
    requests = [r for r in rows if is_request(r)]
    setup = [r for r in rows if is_setup(r)]
    sent = sum(int(r["Request Count"]) for r in requests)
    failed = sum(int(r["Failure Count"]) for r in requests + setup)
    rps = sum(_num(r["Requests/s"]) or 0 for r in requests)
    tps_row = by_name.get((METRIC, "tokens_per_s"))
    tps = percentiles(tps_row)
    aggregate_tps = None
    output_tokens = None
    if tps_row and int(tps_row["Request Count"]):
        mean_tokens = _num(tps_row["Average Content Size"]) or 0
        output_tokens = round(mean_tokens * int(tps_row["Request Count"]))
        aggregate_tps = mean_tokens * (_num(tps_row["Requests/s"]) or 0)  # tokens per request x requests/s
    return {
        "requests": sent,
        "failures": failed,
        "error_rate": failed / sent if sent else None,
        "rps": rps,
        "ttft_ms": percentiles(by_name.get((METRIC, "ttft"))),
        "itl_ms": percentiles(by_name.get((METRIC, "itl"))),
        "tokens_per_s": {
            "aggregate": aggregate_tps,
            "output_tokens": output_tokens,
            "per_request": tps,
        },
        "latency_ms": {r["Name"]: percentiles(r) for r in requests},
        "user_code_exceptions": sum(int(e.get("Count") or 0) for e in exceptions),
        "rows": rows,
    }


def check_slos(summary: dict, args) -> tuple[dict, list[str]]:
    thresholds = {
        "ttft_p95_ms": args.slo_ttft_p95_ms,
        "itl_p95_ms": args.slo_itl_p95_ms,
        "error_rate": args.slo_error_rate,
        "min_tokens_per_s": args.slo_min_tokens_per_s,
    }
    thresholds = {k: v for k, v in thresholds.items() if v is not None}
    missed = []

    def over(label: str, value, limit, unit: str):
        if value is None:
            missed.append(f"{label}: no samples (limit {limit:g}{unit})")
        elif value > limit:
            missed.append(f"{label} = {value:g}{unit} > {limit:g}{unit}")

    if "ttft_p95_ms" in thresholds:
        over("TTFT p95", summary["ttft_ms"].get("p95"), thresholds["ttft_p95_ms"], " ms")
    if "itl_p95_ms" in thresholds:
        over("ITL p95", summary["itl_ms"].get("p95"), thresholds["itl_p95_ms"], " ms")
    if "error_rate" in thresholds:
        over("error rate", summary["error_rate"], thresholds["error_rate"], "")
    if "min_tokens_per_s" in thresholds:
        value, limit = summary["tokens_per_s"]["aggregate"], thresholds["min_tokens_per_s"]
        if value is None:
            missed.append(f"output tokens/s: no samples (min {limit:g})")
        elif value < limit:
            missed.append(f"output tokens/s = {value:.1f} < {limit:g}")
    return thresholds, missed


def _f(x, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def format_table(summary: dict, meta: dict) -> str:
    lines = []
    if meta:
        lines.append(
            f"scenario {meta.get('scenario')} | {meta.get('users')} users @ {meta.get('spawn_rate')}/s | "
            f"{meta.get('duration_s')}s | {meta.get('host')}"
        )
    head = (
        f"{'request':<34} {'reqs':>7} {'fails':>6} {'rps':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'avg ms':>8}"
    )
    lines += [head, "-" * len(head)]
    by_name = {r["Name"]: r for r in summary["rows"] if is_request(r)}
    for name, p in summary["latency_ms"].items():
        row = by_name[name]
        lines.append(
            f"{name:<34} {row['Request Count']:>7} {row['Failure Count']:>6} {_f(_num(row['Requests/s']), 2):>7} "
            f"{_f(p.get('p50')):>8} {_f(p.get('p95')):>8} {_f(p.get('p99')):>8} {_f(p.get('avg'), 1):>8}"
        )
    lines.append("-" * len(head))
    er = summary["error_rate"]
    t, i, tps = summary["ttft_ms"], summary["itl_ms"], summary["tokens_per_s"]
    pr = tps["per_request"]
    lines += [
        f"{'requests':<22} {summary['requests']}",
        f"{'failures':<22} {summary['failures']}" + ("" if er is None else f" ({er:.2%})"),
        f"{'requests/s':<22} {summary['rps']:.2f}",
        f"{'TTFT ms':<22} p50 {_f(t.get('p50'))}  p95 {_f(t.get('p95'))}  p99 {_f(t.get('p99'))}  avg {_f(t.get('avg'), 2)}",
        f"{'ITL ms':<22} p50 {_f(i.get('p50'))}  p95 {_f(i.get('p95'))}  p99 {_f(i.get('p99'))}  avg {_f(i.get('avg'), 2)}",
        f"{'output tok/s (total)':<22} {_f(tps['aggregate'], 1)}  ({_f(tps['output_tokens'])} tokens)",
        f"{'output tok/s (per req)':<22} p50 {_f(pr.get('p50'))}  p5 {_f(pr.get('p5'))}  min {_f(pr.get('min'), 1)}",
    ]
    if summary["user_code_exceptions"]:
        lines.append(f"{'locustfile exceptions':<22} {summary['user_code_exceptions']} (see locust_exceptions.csv)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- chart


def write_chart(history: list[dict], path: Path, title: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if r.get("Name") != "Aggregated"]
    if not rows:
        return False
    t0 = min(int(r["Timestamp"]) for r in rows)
    series: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        series.setdefault((r["Type"], r["Name"]), []).append(r)
    users = {}
    for r in history:
        users[int(r["Timestamp"]) - t0] = int(r["User Count"])

    def has_window(r: dict) -> bool:
        # Rows before the first sample, or before locust's 10 s percentile window has data
        # (all percentiles 0 although samples >= 1 ms exist), carry no percentile.
        if not int(r["Total Request Count"]):
            return False
        return not (_num(r.get("100%")) == 0 and (_num(r["Total Max Response Time"]) or 0) >= 1)

    def xs_ys(key, col):
        pts = [(int(r["Timestamp"]) - t0, _num(r[col])) for r in series.get(key, []) if has_window(r)]
        pts = [(x, y) for x, y in pts if y is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(3, 1, figsize=(11, 10), sharex=True)
    ax = axes[0]
    for key, label, color in [((METRIC, "ttft"), "TTFT", "tab:blue"), ((METRIC, "itl"), "ITL", "tab:orange")]:
        for col, style in (("50%", "-"), ("95%", "--")):
            x, y = xs_ys(key, col)
            if x:
                ax.plot(x, y, style, color=color, label=f"{label} p{col[:-1]}")
    ax.set_ylabel("ms (10 s window)")
    ax.set_title("Time to first token and inter-token latency")
    ax.set_yscale("symlog", linthresh=1)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)

    ax = axes[1]
    for key in sorted(k for k in series if k[0] not in (METRIC, "") and not k[1].startswith("setup:")):
        for col, style in (("50%", "-"), ("95%", "--")):
            x, y = xs_ys(key, col)
            if x:
                ax.plot(x, y, style, label=f"{key[1]} p{col[:-1]}")
    ax.set_ylabel("ms (10 s window)")
    ax.set_title("End-to-end request latency")
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax.grid(alpha=0.3)

    ax = axes[2]
    rps: dict[int, float] = {}
    fails: dict[int, float] = {}
    for key, rs in series.items():
        if key[0] in (METRIC, "") or key[1].startswith("setup:"):
            continue
        for r in rs:
            x = int(r["Timestamp"]) - t0
            rps[x] = rps.get(x, 0) + (_num(r["Requests/s"]) or 0)
            fails[x] = fails.get(x, 0) + (_num(r["Failures/s"]) or 0)
    tok_x, tok_y = [], []
    prev = None
    for r in series.get((METRIC, "tokens_per_s"), []):
        x = int(r["Timestamp"]) - t0
        total = int(r["Total Request Count"]) * (_num(r["Total Average Content Size"]) or 0)
        if prev is not None and x > prev[0]:
            tok_x.append(x)
            tok_y.append((total - prev[1]) / (x - prev[0]))
        prev = (x, total)
    if tok_x:  # 5-point moving average: per-second token deltas are lumpy
        k = 5
        tok_y = [
            sum(tok_y[max(0, i - k + 1) : i + 1]) / len(tok_y[max(0, i - k + 1) : i + 1]) for i in range(len(tok_y))
        ]
        ax.plot(tok_x, tok_y, color="tab:green", label="output tokens/s (5 s avg)")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("output tokens/s")
    ax.set_xlabel("seconds since start")
    ax.set_title("Throughput")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    if rps:
        xs = sorted(rps)
        ax2.plot(xs, [rps[x] for x in xs], color="tab:purple", label="requests/s")
        if any(fails.values()):
            ax2.plot(xs, [fails[x] for x in xs], color="tab:red", label="failures/s")
    if users:
        xs = sorted(users)
        ax2.step(xs, [users[x] for x in xs], where="post", color="gray", alpha=0.6, label="users")
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("requests/s, users")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + ax2.get_legend_handles_labels()[1]
    ax.legend(handles, labels, loc="upper left", fontsize=8)

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def judge(out: Path, args, meta: dict) -> int:
    rows = read_stats(out)
    summary = summarize(rows, read_exceptions(out))
    thresholds, missed = check_slos(summary, args)
    print(format_table(summary, meta))
    failures = read_failures(out)
    if failures:
        print("top failures (locust_failures.csv):")
        for f in failures[:5]:
            print(f"  {f['Occurrences']:>6} x {f['Method']} {f['Name']}: {f['Error'][:160]}")

    broken = []
    if meta.get("locust_exit_code") not in (None, 0, 1):
        broken.append(f"locust exited with code {meta['locust_exit_code']} (see {out / 'locust.log'})")
    if summary["user_code_exceptions"]:
        broken.append(f"the locustfile raised {summary['user_code_exceptions']} exceptions (locust_exceptions.csv)")
    if summary["requests"] - summary["failures"] <= 0:
        broken.append("no successful request: nothing was measured")

    chart = None
    if not args.no_chart:
        try:
            title = f"{meta.get('scenario', '')} {meta.get('users', '')} users {meta.get('host', '')}".strip()
            if write_chart(read_history(out), out / "chart.png", title):
                chart = str(out / "chart.png")
        except Exception as exc:  # a chart must not hide the verdict
            print(f"chart failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    verdict = EXIT_BROKEN if broken else (EXIT_SLO if missed else EXIT_OK)
    doc = {
        "meta": meta,
        **summary,
        "slo": {"thresholds": thresholds, "missed": missed, "passed": not missed},
        "problems": broken,
        "exit_code": verdict,
        "files": {
            "stats_csv": str(out / f"{PREFIX}_stats.csv"),
            "stats_history_csv": str(out / f"{PREFIX}_stats_history.csv"),
            "failures_csv": str(out / f"{PREFIX}_failures.csv"),
            "html_report": str(out / "report.html"),
            "chart": chart,
        },
    }
    (out / "summary.json").write_text(json.dumps(doc, indent=2))

    print()
    for problem in broken:
        print(f"RUN PROBLEM: {problem}")
    if thresholds:
        for m in missed:
            print(f"SLO MISSED: {m}")
        if not missed:
            print("SLOs met: " + ", ".join(f"{k} {v:g}" for k, v in thresholds.items()))
    print(f"results in {out} (report.html, summary.json{', chart.png' if chart else ''})")
    return verdict


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    out = args.check_only or args.out or Path("loadtests/results") / f"{args.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"

    try:
        if args.check_only:
            meta = {}
            try:
                meta = json.loads((out / "summary.json").read_text()).get("meta", {})
            except (OSError, ValueError):
                pass
            meta["checked_only"] = True
            return judge(out, args, meta)

        started = time.time()
        rc = run_locust(args, out, extra)
        meta = {
            "scenario": args.scenario,
            "users": args.users,
            "spawn_rate": args.spawn_rate,
            "duration_s": args.duration,
            "host": args.host,
            "model": args.model or None,
            "models": args.models or None,
            "seed": args.seed,
            "itl_mode": args.itl_mode,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "wall_s": round(time.time() - started, 1),
            "locust_exit_code": rc,
            "locust_args": extra,
        }
        return judge(out, args, meta)
    except Broken as exc:
        print(f"RUN PROBLEM: {exc}", file=sys.stderr)
        log = out / "locust.log"
        if log.exists() and not args.check_only:
            print("".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:]), file=sys.stderr)
        return EXIT_BROKEN


if __name__ == "__main__":
    sys.exit(main())
