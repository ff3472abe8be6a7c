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
    """Sleepers that look like Ray's processes: a title or binary as argv[0], or a Python script."""
    titled = {
        "gcs": ["/ray/core/src/ray/gcs/gcs_server", "--gcs_server_port=6379"],
        # The raylet's argv names the worker command and the agents' (dashboard, runtime_env), and
        # the GCS: only its program counts, and it is never reniced (its workers would inherit it).
        "raylet": [
            "/ray/core/src/ray/raylet/raylet",
            "--python_worker_command=python setup_worker.py default_worker.py",
            "--dashboard_agent_command=python -u dashboard/agent.py",
            "--runtime_env_agent_command=python -u runtime_env/agent/main.py",
            "--gcs-address=10.0.0.1:6379",
        ],
        "controller": ["ray::ServeController"],
        # an engine is never reniced, whatever its title says (a title is one argv element, spaces and all)
        "engine": ["VLLM::EngineCore ServeController runtime_env"],
        "ingress": ["ray::ServeReplica:llm:ingress"],
        "replica": ["ray::ServeReplica:llm:llm-tiny-llama"],
        "other": ["unrelated-job", "--dashboard"],
    }
    sleep = "import time; time.sleep(60)"
    procs = {
        key: subprocess.Popen([argv[0], "-c", sleep, *argv[1:]], executable=sys.executable)
        for key, argv in titled.items()
    }
    scripts = {}
    for name in ("default_worker.py", "setup_worker.py", "dashboard.py"):
        scripts[name] = tmp_path / name
        scripts[name].write_text(sleep)
    # A Ray worker before its title is set (it may become an LLM replica): default_worker.py is
    # the program, and its argv names the raylet's socket.
    raylet_socket = "--raylet-name=/tmp/ray/session_1/sockets/raylet"
    procs["starting"] = subprocess.Popen([sys.executable, str(scripts["default_worker.py"]), raylet_socket])
    # An actor with a runtime_env (an LLM replica in direct mode) starts as setup_worker.py, which
    # then execs default_worker.py in the same process.
    procs["setting_up"] = subprocess.Popen(
        [sys.executable, str(scripts["setup_worker.py"]), str(scripts["default_worker.py"]), raylet_socket]
    )
    procs["dashboard"] = subprocess.Popen([sys.executable, "-u", str(scripts["dashboard.py"]), "--port=8265"])
    found = {key: psutil.Process(p.pid) for key, p in procs.items()}
    _wait_for_command_lines(found.values())
    yield found
    for p in procs.values():
        p.kill()
        p.wait()


def test_proxy_mode_renices_the_control_plane_only(fake_processes):
    changed = set(deprioritize_ray_control_plane(direct_ingress=False))
    p = fake_processes
    assert {p["gcs"].pid, p["controller"].pid, p["dashboard"].pid} <= changed
    assert p["gcs"].nice() == NICENESS and p["controller"].nice() == NICENESS and p["dashboard"].nice() == NICENESS
    assert p["engine"].nice() == 0 and p["ingress"].nice() == 0 and p["other"].nice() == 0


def test_the_raylet_is_left_alone_its_workers_would_inherit_its_niceness(fake_processes):
    """Every worker the raylet starts later (the node's next replicas) would run at its niceness."""
    deprioritize_ray_control_plane(direct_ingress=True)
    assert fake_processes["raylet"].nice() == 0


def test_direct_mode_also_renices_the_ingress(fake_processes):
    deprioritize_ray_control_plane(direct_ingress=True)
    p = fake_processes
    assert p["ingress"].nice() == NICENESS
    assert p["engine"].nice() == 0 and p["other"].nice() == 0


def test_llm_replicas_are_never_reniced_not_even_while_they_start(fake_processes):
    deprioritize_ray_control_plane(direct_ingress=True)
    p = fake_processes
    assert p["starting"].nice() == 0 and p["replica"].nice() == 0
    assert p["setting_up"].nice() == 0


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
