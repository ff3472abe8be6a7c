"""CPU priorities and placement on a node serving the dev config (direct ingress).

Ray starts its workers at nice 15; left so, the LLM replica and its vLLM engine
lose the CPU to Ray's agents and to any client on the node under load
(loadtests/PERFORMANCE.md). The replica runs at `ingress.replica_niceness` (0)
and Ray's control plane but the raylet is reniced to 10 (serving/deployments/node_tuning.py).
vLLM binds its worker to a core; the replica binds the engine core beside it.
"""

import os
import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.conftest import REPLICA


def test_engine_and_replica_run_at_normal_priority(dev_server):
    replica = dev_server.descendants(REPLICA)
    engines = dev_server.engine_processes()
    assert replica and engines, (replica, engines)
    assert {p.nice() for p in replica + engines} == {0}


def test_ray_control_plane_yields_to_the_engine(dev_server):
    control = dev_server.descendants("gcs_server", "ray::ServeController")
    assert len(control) >= 2
    assert all(p.nice() >= 10 for p in control), {" ".join(p.cmdline())[:40]: p.nice() for p in control}
    # The raylet is left alone: every worker it starts later (a node's next replicas) would inherit its niceness.
    raylets = dev_server.descendants("raylet")
    raylets = [p for p in raylets if os.path.basename(p.cmdline()[0]) == "raylet"]
    assert raylets and all(p.nice() == os.nice(0) for p in raylets), [p.nice() for p in raylets]  # as started


def _core_affinity(pid):
    return {frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")}


def test_engine_core_joins_the_workers_core_under_load_and_leaves_after(dev_server, client):
    """16 streams in flight (>= colocate_engine_core_at, 12) bind the engine core to its worker's core."""
    core = dev_server.descendants("VLLM::EngineCore")
    worker = dev_server.descendants("VLLM::Worker")
    assert len(core) == 1 and len(worker) == 1, (core, worker)
    free = os.sched_getaffinity(core[0].pid)
    worker_cpus = os.sched_getaffinity(worker[0].pid)
    assert worker_cpus < free, "vLLM binds its CPU worker to a subset of the cores"
    bound = frozenset({min(worker_cpus)})
    assert _core_affinity(core[0].pid) == {frozenset(free)}, "idle: the engine core floats"

    def one_stream():
        stream = client.chat.completions.create(
            model="tiny-llama",
            messages=[{"role": "user", "content": "count"}],
            max_tokens=1500,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        return sum(1 for _ in stream)

    seen = set()
    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one_stream) for _ in range(16)]
        while not all(f.done() for f in futures):
            seen |= _core_affinity(core[0].pid)
            time.sleep(0.05)
        assert all(f.result() > 100 for f in futures)
    assert bound in seen, seen
    deadline = time.monotonic() + 5
    while _core_affinity(core[0].pid) != {frozenset(free)}:
        assert time.monotonic() < deadline, "the engine core stayed bound after the load ended"
        time.sleep(0.1)
