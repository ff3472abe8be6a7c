"""Where the machine's CPU goes while a benchmark runs: per-process CPU time over a window.

On 2 shared cores a busy neighbour (a stray engine, a Ray cluster still shutting
down, another user's job) moves results by tens of percent, so the benchmark
records what ran beside the server in every measured window.

A snapshot is taken in a short-lived child process (`python -m loadtests.cpu`):
inside the load generator, a thread walking /proc waits for the GIL at every
read while the streams hold it, and a walk that takes seconds smears the window.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import psutil


def snapshot() -> dict:
    """CPU seconds so far of every readable process, machine-wide CPU times, and when."""
    t0 = time.monotonic()
    procs = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        t = p.info.get("cpu_times")
        if t is not None and p.pid != os.getpid():
            procs[p.pid] = (p.info.get("name") or "?", t.user + t.system)
    t1 = time.monotonic()
    # CLOCK_MONOTONIC is system-wide: comparable between the child and the bench.
    return {"t": (t0 + t1) / 2, "procs": procs, "machine": psutil.cpu_times()._asdict()}


async def snapshot_in_child() -> dict:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "loadtests.cpu", stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    data = json.loads(out)
    data["procs"] = {int(pid): tuple(v) for pid, v in data["procs"].items()}
    return data


def _label(pid: int, name: str) -> str:
    try:
        cmd = psutil.Process(pid).cmdline()
    except psutil.Error:
        return name
    # Ray and vLLM name their processes with setproctitle ("ray::ServeReplica:...",
    # "VLLM::EngineCore", padded with spaces); for interpreters the module or script says more.
    if cmd and (cmd[0].startswith(("ray::", "VLLM::")) or name.startswith(("python", "serve"))):
        return " ".join(cmd).strip()[:70]
    return name


def busiest(before: dict, after: dict, top: int = 8, exclude: set[int] | None = None) -> list[dict]:
    """The processes that used the most CPU between two snapshots, in % of one core.
    A process born inside the window counts from zero."""
    seconds = after["t"] - before["t"]
    rows = []
    for pid, (name, t1) in after["procs"].items():
        if exclude and pid in exclude:
            continue
        t0 = before["procs"][pid][1] if pid in before["procs"] else 0.0
        share = (t1 - t0) / seconds * 100
        if share >= 0.5:
            rows.append({"pid": pid, "process": name, "cpu_pct": round(share, 1)})
    rows.sort(key=lambda r: -r["cpu_pct"])
    rows = rows[:top]
    for r in rows:
        r["process"] = _label(r["pid"], r["process"])
    return rows


def machine_share(before: dict, after: dict) -> dict:
    """Machine-wide idle / iowait / steal between two snapshots, in % of one core.
    Steal is time the hypervisor gave this VM's CPUs to someone else: invisible in
    per-process figures, and a sign the run was slowed from outside."""
    seconds = after["t"] - before["t"]
    return {
        field: round((after["machine"].get(field, 0.0) - before["machine"].get(field, 0.0)) / seconds * 100, 1)
        for field in ("idle", "iowait", "steal")
    }


def describe(rows: list[dict], n: int = 6) -> str:
    """One line for a console: "VLLM::Worker 90%, VLLM::EngineCore 47%, ..."."""
    return ", ".join(f"{r['process'][:40].strip()} {r['cpu_pct']:.0f}%" for r in rows[:n])


def machine_busy(window_s: float = 3.0, exclude: set[int] | None = None) -> tuple[float, list[dict]]:
    """CPU used by every process (except `exclude`) over window_s, in % of one core, and the top users.
    For an idle moment (before a server starts): snapshots in this process are fine then."""
    before = snapshot()
    time.sleep(window_s)
    rows = busiest(before, snapshot(), top=50, exclude=exclude)
    return round(sum(r["cpu_pct"] for r in rows), 1), rows[:8]


if __name__ == "__main__":
    print(json.dumps(snapshot()))
