"""The benchmark's per-process CPU accounting (loadtests/cpu.py)."""

import asyncio
import os
import subprocess
import sys
import time

from loadtests import cpu


def snap(t, procs, **machine):
    return {"t": t, "procs": procs, "machine": {"idle": 0.0, "iowait": 0.0, "steal": 0.0, **machine}}


def test_busiest_ranks_by_share_of_a_core_and_counts_new_processes_from_zero():
    before = snap(100.0, {1: ("engine", 10.0), 2: ("idle-daemon", 5.0), 3: ("client", 1.0)})
    after = snap(110.0, {1: ("engine", 18.0), 2: ("idle-daemon", 5.01), 3: ("client", 2.0), 4: ("born-in-window", 0.5)})
    rows = cpu.busiest(before, after)
    # pids 1-4 are not these processes on this machine: labels fall back to the names given
    assert [(r["pid"], r["cpu_pct"]) for r in rows] == [(1, 80.0), (3, 10.0), (4, 5.0)]
    assert all(r["pid"] != 2 for r in rows)  # below half a percent of a core
    assert [r["pid"] for r in cpu.busiest(before, after, exclude={1})] == [3, 4]


def test_machine_share_over_the_snapshots_interval():
    before = snap(100.0, {}, idle=50.0, steal=1.0)
    after = snap(102.0, {}, idle=51.0, steal=1.5)
    assert cpu.machine_share(before, after) == {"idle": 50.0, "iowait": 0.0, "steal": 25.0}


def test_snapshot_in_a_child_sees_a_busy_process():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 3\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.3)  # past the interpreter's start-up
        before = asyncio.run(cpu.snapshot_in_child())
        time.sleep(1.0)
        after = asyncio.run(cpu.snapshot_in_child())
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.9 < after["t"] - before["t"] < 3
    rows = cpu.busiest(before, after, top=50)
    mine = [r for r in rows if r["pid"] == spinner.pid]
    assert mine and mine[0]["cpu_pct"] > 20, rows
    assert os.getpid() in before["procs"]  # the caller is seen; the child leaves itself out
    assert set(cpu.machine_share(before, after)) == {"idle", "iowait", "steal"}


def test_machine_busy_leaves_out_the_excluded():
    busy, top = cpu.machine_busy(0.3, exclude={os.getpid()})
    assert busy >= 0 and all(r["pid"] != os.getpid() for r in top)
