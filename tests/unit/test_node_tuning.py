"""node_tuning renices Ray's control plane (never an engine, the ingress only in direct mode) and places vLLM's engine core."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from serving.deployments.node_tuning import (
    ENGINE_CORE,
    ENGINE_WORKER,
    NICENESS,
    EngineCorePlacement,
    deprioritize_ray_control_plane,
    has_title,
)


def _wait_for_command_lines(procs, timeout_s=10.0):
    """Popen returns once the child's exec began, but its command line reads empty until the
    kernel has set up the new program's arguments (a CI run under load saw a fake engine
    worker untitled). Wait until every command line reads as it will stay."""
    deadline = time.monotonic() + timeout_s
    while not all(len(p.cmdline()) > 1 for p in procs):
        assert time.monotonic() < deadline, "the fake processes never showed their command lines"
        time.sleep(0.01)


@pytest.fixture
def fake_processes(tmp_path):
    """Sleepers whose command lines look like Ray's processes (the renice matches command lines)."""
    names = {
        "gcs": "gcs_server",
        # The raylet's argv names the worker command, default_worker.py included.
        "raylet": "raylet --python_worker_command=python ray/_private/workers/default_worker.py",
        "controller": "ray::ServeController",
        "engine": "VLLM::EngineCore raylet",  # an engine is never reniced, whatever else it says
        "ingress": "ray::ServeReplica:llm:ingress",
        "replica": "ray::ServeReplica:llm:llm-tiny-llama",
        "other": "unrelated-job",
    }
    sleep = "import time; time.sleep(60)"
    procs = {key: subprocess.Popen([sys.executable, "-c", sleep, text]) for key, text in names.items()}
    # A Ray worker before its title is set (it may become an LLM replica): default_worker.py is
    # the program, and its argv names the raylet's socket.
    worker = tmp_path / "default_worker.py"
    worker.write_text(sleep)
    raylet_socket = "--raylet-name=/tmp/ray/session_1/sockets/raylet"
    procs["starting"] = subprocess.Popen([sys.executable, str(worker), raylet_socket])
    found = {key: psutil.Process(p.pid) for key, p in procs.items()}
    _wait_for_command_lines(found.values())
    yield found
    for p in procs.values():
        p.kill()
        p.wait()


def test_proxy_mode_renices_the_control_plane_only(fake_processes):
    changed = set(deprioritize_ray_control_plane(direct_ingress=False))
    p = fake_processes
    assert {p["gcs"].pid, p["raylet"].pid, p["controller"].pid} <= changed
    assert p["gcs"].nice() == NICENESS and p["raylet"].nice() == NICENESS and p["controller"].nice() == NICENESS
    assert p["engine"].nice() == 0 and p["ingress"].nice() == 0 and p["other"].nice() == 0


def test_direct_mode_also_renices_the_ingress(fake_processes):
    deprioritize_ray_control_plane(direct_ingress=True)
    p = fake_processes
    assert p["ingress"].nice() == NICENESS
    assert p["engine"].nice() == 0 and p["other"].nice() == 0


def test_llm_replicas_are_never_reniced_not_even_while_they_start(fake_processes):
    deprioritize_ray_control_plane(direct_ingress=True)
    p = fake_processes
    assert p["starting"].nice() == 0 and p["replica"].nice() == 0


def test_never_raises_priority(fake_processes):
    p = fake_processes
    p["gcs"].nice(15)
    deprioritize_ray_control_plane(direct_ingress=True)
    assert p["gcs"].nice() == 15


SPAWN_FAKE_ENGINE = """
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name])
        for name in ("VLLM::EngineCore", "VLLM::Worker_TP0")]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(60)
"""


@pytest.fixture
def fake_engine():
    """A fake replica process whose children's command lines look like vLLM's engine core and worker.

    Its own parent process, so the dev stack a test session may be running (also our child) is not seen.
    """
    replica = subprocess.Popen([sys.executable, "-c", SPAWN_FAKE_ENGINE], stdout=subprocess.PIPE, text=True)
    core, worker = map(int, replica.stdout.readline().split())
    procs = {"core": psutil.Process(core), "worker": psutil.Process(worker)}
    _wait_for_command_lines(procs.values())
    assert has_title(procs["core"], ENGINE_CORE) and has_title(procs["worker"], ENGINE_WORKER)
    yield {"replica": replica.pid, **procs}
    for p in psutil.Process(replica.pid).children() + [psutil.Process(replica.pid)]:
        p.kill()
    replica.wait()


def _core_affinity(pid):
    """The set of affinities of all the process's threads."""
    return {frozenset(os.sched_getaffinity(int(tid))) for tid in os.listdir(f"/proc/{pid}/task")}


def test_engine_core_follows_the_load_onto_a_bound_workers_core(fake_engine):
    free = os.sched_getaffinity(0)
    worker_cpu = max(free)
    os.sched_setaffinity(fake_engine["worker"].pid, {worker_cpu})
    placement = EngineCorePlacement(fake_engine["replica"])
    assert placement.active and placement.target == {worker_cpu}
    core = fake_engine["core"].pid

    placement.follow(in_flight=11, threshold=12)
    assert _core_affinity(core) == {frozenset(free)}
    placement.follow(in_flight=12, threshold=12)
    assert _core_affinity(core) == {frozenset({worker_cpu})}
    placement.follow(in_flight=7, threshold=12)  # between half and the threshold: stays
    assert _core_affinity(core) == {frozenset({worker_cpu})}
    placement.follow(in_flight=6, threshold=12)
    assert _core_affinity(core) == {frozenset(free)}
    placement.follow(in_flight=0, threshold=0)  # 0: always
    assert _core_affinity(core) == {frozenset({worker_cpu})}


def test_nothing_to_place_when_the_worker_is_not_bound(fake_engine):
    placement = EngineCorePlacement(fake_engine["replica"])
    assert not placement.active
    placement.follow(in_flight=100, threshold=1)
    assert _core_affinity(fake_engine["core"].pid) == {frozenset(os.sched_getaffinity(0))}


def test_placement_stops_when_the_engine_core_is_gone(fake_engine):
    os.sched_setaffinity(fake_engine["worker"].pid, {max(os.sched_getaffinity(0))})
    placement = EngineCorePlacement(fake_engine["replica"])
    assert placement.active
    fake_engine["core"].kill()  # left a zombie: its parent, the fake replica, does not reap it
    deadline = time.monotonic() + 5
    while fake_engine["core"].status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    placement.follow(in_flight=20, threshold=12)
    assert not placement.active and not placement.colocated
    placement.follow(in_flight=0, threshold=12)  # no error, nothing to do
