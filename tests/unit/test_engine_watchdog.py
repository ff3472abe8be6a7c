"""The engine watchdog (serving/deployments/engine_watchdog.py) with stand-in processes: no Ray, no vLLM.

A stand-in replica starts a stand-in engine (a sleeper titled like vLLM's engine
core) and the real watchdog. When the replica is SIGKILLed, as `ray stop --force`
does, the engine must be gone within a few seconds; when the replica stops its
engine itself and exits, the watchdog must exit without touching anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from serving.deployments.engine_watchdog import engine_processes

REPLICA = textwrap.dedent(
    """
    import subprocess, sys, time
    from serving.deployments import engine_watchdog
    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "VLLM::EngineCore"])
    watchdog = engine_watchdog.start()
    print(engine.pid, watchdog.pid, flush=True)
    if sys.argv[1] == "clean":
        time.sleep(2)           # the watchdog has seen the engine
        engine.terminate()      # the replica's own shutdown
        engine.wait()
        sys.exit(0)
    time.sleep(120)
    """
)


def start_replica(mode: str) -> tuple[subprocess.Popen, int, int]:
    replica = subprocess.Popen(
        [sys.executable, "-c", REPLICA, mode], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    engine_pid, watchdog_pid = (int(x) for x in replica.stdout.readline().split())
    return replica, engine_pid, watchdog_pid


def kill_all(*pids: int) -> None:
    """What a test started, whatever it asserted."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_engine_of_a_killed_replica_is_stopped():
    replica, engine, watchdog = start_replica("kill")
    try:
        time.sleep(2)  # the watchdog has seen the engine
        replica.send_signal(signal.SIGKILL)
        replica.wait()
        assert gone_within(engine, 8), "the engine outlived its replica"
        assert gone_within(watchdog, 8), "the watchdog did not exit after its work"
    finally:
        kill_all(engine, watchdog)


def test_a_replica_that_stops_its_engine_leaves_the_watchdog_nothing_to_do():
    replica, engine, watchdog = start_replica("clean")
    assert replica.wait(timeout=20) == 0
    assert gone_within(engine, 1)
    assert gone_within(watchdog, 5)


def test_only_engine_titles_count():
    me = psutil.Process()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "not-an-engine"])
    titled = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "VLLM::Worker"])
    try:
        # A command line reads empty for a moment after Popen returns (the kernel sets it up
        # after the exec began): wait until both read as they will stay.
        deadline = time.monotonic() + 10
        while not all(len(psutil.Process(p.pid).cmdline()) > 1 for p in (sleeper, titled)):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        found = engine_processes(me)
        assert titled.pid in found and sleeper.pid not in found
    finally:
        for p in (sleeper, titled):
            p.kill()
            p.wait()


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_an_orphaned_replica_is_stopped_with_its_engine():
    # The raylet's death, in small: the replica's parent dies, the replica lives on.
    raylet = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "r = subprocess.Popen([sys.executable, '-c', sys.argv[1], 'kill'], stdout=sys.stdout); "
         "time.sleep(120)", REPLICA],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    engine, watchdog = (int(x) for x in raylet.stdout.readline().split())
    replica = psutil.Process(engine).ppid()
    try:
        time.sleep(2)
        raylet.send_signal(signal.SIGKILL)
        raylet.wait()
        assert gone_within(engine, 8), "the orphaned replica's engine lives on"
        assert gone_within(replica, 8), "the orphaned replica lives on"
        assert gone_within(watchdog, 8)
    finally:
        for pid in (engine, watchdog, replica):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


def test_engines_handed_over_are_stopped_even_if_the_replica_died_before_the_watch_began():
    """Regression: a replica killed while its watchdog was starting left its engines running.

    Seen in a CI run under load (tests/e2e/test_engine_lifetime.py::test_ray_stop_force): the
    watchdog found no replica to watch, reaped nothing and exited. The replica now hands over
    the engine processes it has, and waits until the watchdog watches.
    """
    from serving.deployments.engine_watchdog import watch

    engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "VLLM::EngineCore"])
    gone_replica = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_replica.wait()
    try:
        created = psutil.Process(engine.pid).create_time()
        assert watch(gone_replica.pid, known={engine.pid: created}) == [engine.pid]
        assert engine.wait(timeout=8) is not None
    finally:
        engine.kill()


def test_start_returns_once_the_watchdog_watches_so_an_immediate_kill_is_covered():
    replica = subprocess.Popen(
        [sys.executable, "-c", REPLICA.replace("time.sleep(2)", "pass"), "kill"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    engine, watchdog = (int(x) for x in replica.stdout.readline().split())
    try:
        replica.send_signal(signal.SIGKILL)  # at once: no time given to the watchdog
        replica.wait()
        assert gone_within(engine, 8), "the engine outlived its replica"
    finally:
        kill_all(engine, watchdog)


ORPHANING_REPLICA = textwrap.dedent(
    """
    import subprocess, sys, time
    from serving.deployments import engine_watchdog
    engine_watchdog.mark_owner()
    watchdog = engine_watchdog.start()   # before the engine, as the replica does now
    # The engine's own child, started and orphaned at once: it is no descendant of the replica
    # by the time the watchdog looks (as an engine orphaned while the replica was being killed).
    starter = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', 'VLLM::Worker']); "
        "print(p.pid, flush=True)")], stdout=subprocess.PIPE, text=True)
    orphan = int(starter.stdout.readline())
    starter.wait()
    print(orphan, watchdog.pid, flush=True)
    time.sleep(120)
    """
)


def test_an_engine_orphaned_before_the_watchdog_saw_it_is_found_by_its_mark():
    replica = subprocess.Popen([sys.executable, "-c", ORPHANING_REPLICA], stdout=subprocess.PIPE, text=True)
    assert replica.stdout is not None
    orphan_pid, watchdog_pid = (int(x) for x in replica.stdout.readline().split())
    orphan = psutil.Process(orphan_pid)
    assert orphan.ppid() != replica.pid and orphan.is_running()  # not the replica's descendant
    replica.send_signal(signal.SIGKILL)
    replica.wait()
    try:
        gone, alive = psutil.wait_procs([orphan], timeout=15)
        assert not alive, "the orphaned engine process outlived its replica"
    finally:
        for pid in (orphan_pid, watchdog_pid):
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
