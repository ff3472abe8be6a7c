"""CPU priorities and placement on a node serving the dev config (direct ingress).

Ray starts its workers at nice 15; left so, the LLM replica and its vLLM engine
lose the CPU to Ray's agents and to any client on the node under load
(loadtests/PERFORMANCE.md). The replica runs at `ingress.replica_niceness` (0)
and Ray's control plane is reniced to 10 (serving/deployments/node_tuning.py).
vLLM binds its worker to a core; the replica binds the engine core beside it.
"""

import os

import pytest

pytestmark = pytest.mark.e2e


def test_engine_and_replica_run_at_normal_priority(dev_server):
    replica = dev_server.descendants("ServeReplica:llm:llm-tiny-llama")
    engines = dev_server.engine_processes()
    assert replica and engines, (replica, engines)
    assert {p.nice() for p in replica + engines} == {0}


def test_ray_control_plane_yields_to_the_engine(dev_server):
    control = dev_server.descendants("gcs_server", "raylet", "ray::ServeController")
    assert len(control) >= 3
    assert all(p.nice() >= 10 for p in control), {" ".join(p.cmdline())[:40]: p.nice() for p in control}


def test_engine_core_shares_the_workers_core(dev_server):
    core = dev_server.descendants("VLLM::EngineCore")
    worker = dev_server.descendants("VLLM::Worker")
    assert len(core) == 1 and len(worker) == 1, (core, worker)
    worker_cpus = os.sched_getaffinity(worker[0].pid)
    assert worker_cpus < os.sched_getaffinity(0), "vLLM should bind its CPU worker to a subset of the cores"
    threads = {int(t) for t in os.listdir(f"/proc/{core[0].pid}/task")}
    assert {frozenset(os.sched_getaffinity(t)) for t in threads} == {frozenset({min(worker_cpus)})}
