"""The benchmark's per-process CPU accounting (loadtests/cpu.py)."""

import os
import subprocess
import sys
import time

from loadtests import cpu


def test_busiest_ranks_by_share_of_a_core_and_counts_new_processes_from_zero():
    before = {1: ("engine", 10.0), 2: ("idle-daemon", 5.0), 3: ("client", 1.0)}
    after = {1: ("engine", 18.0), 2: ("idle-daemon", 5.01), 3: ("client", 2.0), 4: ("born-in-window", 0.5)}
    rows = cpu.busiest(before, after, seconds=10.0)
    assert [(r["process"], r["cpu_pct"]) for r in rows] == [("engine", 80.0), ("client", 10.0), ("born-in-window", 5.0)]
    # below half a percent of a core is left out; a gone process is not counted
    assert all(r["pid"] != 2 for r in rows)


def test_machine_busy_sees_a_busy_process_and_excludes_ours():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 3\nwhile time.time() < t: pass"])
    try:
        time.sleep(0.3)  # past the interpreter's start-up
        busy, top = cpu.machine_busy(1.0, exclude={os.getpid()})
    finally:
        spinner.kill()
        spinner.wait()
    assert all(r["pid"] != os.getpid() for r in top)
    mine = [r for r in top if r["pid"] == spinner.pid]
    assert mine and mine[0]["cpu_pct"] > 20, top
    assert busy >= mine[0]["cpu_pct"]


def test_machine_share_has_steal_and_idle():
    t0 = cpu.machine_times()
    time.sleep(0.2)
    share = cpu.machine_share(t0, cpu.machine_times(), 0.2)
    assert set(share) == {"idle", "iowait", "steal"}
    assert 0 <= share["idle"] <= 100 * os.cpu_count() * 1.5
