"""Where the machine's CPU goes while a benchmark runs: per-process CPU time over a window.

On 2 shared cores a busy neighbour (a stray engine, a Ray cluster still shutting
down, another user's job) moves results by tens of percent, so the benchmark
records what ran beside the server in every measured window.
"""

from __future__ import annotations

import time

import psutil


def _label(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
    except psutil.Error:
        cmd = []
    name = p.info.get("name") or "?"
    # Ray and vLLM name their processes with setproctitle ("ray::ServeReplica:...",
    # "VLLM::EngineCore"); for plain interpreters the module or script says more.
    if cmd and (cmd[0].startswith(("ray::", "VLLM::")) or name.startswith(("python", "serve"))):
        return " ".join(cmd)[:70]
    return name


def cpu_times() -> dict[int, tuple[str, float]]:
    """pid -> (label, user+system CPU seconds so far) for every process we can read."""
    out: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info.get("cpu_times")
        if t is None:
            continue
        out[p.pid] = (_label(p), t.user + t.system)
    return out


def busiest(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], seconds: float, top: int = 8) -> list[dict]:
    """The processes that used the most CPU between two cpu_times() snapshots, in % of one core.
    A process born inside the window counts from zero."""
    rows = []
    for pid, (label, t1) in after.items():
        t0 = before[pid][1] if pid in before else 0.0
        share = (t1 - t0) / seconds * 100
        if share >= 0.5:
            rows.append({"pid": pid, "process": label, "cpu_pct": round(share, 1)})
    rows.sort(key=lambda r: -r["cpu_pct"])
    return rows[:top]


def describe(rows: list[dict], n: int = 6) -> str:
    """One line for a console: "VLLM::Worker 90%, VLLM::EngineCore 47%, ..."."""
    return ", ".join(f"{r['process'][:40].strip()} {r['cpu_pct']:.0f}%" for r in rows[:n])


def machine_busy(window_s: float = 3.0, exclude: set[int] | None = None) -> tuple[float, list[dict]]:
    """CPU used by every process (except `exclude`) over window_s, in % of one core, and the top users."""
    exclude = exclude or set()
    before = cpu_times()
    time.sleep(window_s)
    rows = [r for r in busiest(before, cpu_times(), window_s, top=50) if r["pid"] not in exclude]
    return round(sum(r["cpu_pct"] for r in rows), 1), rows[:8]


def machine_times():
    return psutil.cpu_times()


def machine_share(before, after, seconds: float) -> dict:
    """Machine-wide idle / iowait / steal between two machine_times(), in % of one core.
    Steal is time the hypervisor gave this VM's CPUs to someone else: invisible in
    per-process figures, and a sign the run was slowed from outside."""
    return {
        field: round((getattr(after, field, 0.0) - getattr(before, field, 0.0)) / seconds * 100, 1)
        for field in ("idle", "iowait", "steal")
    }
