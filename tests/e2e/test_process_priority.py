"""CPU priorities on a node serving the dev config (direct ingress).

Ray starts its workers at nice 15; left so, the LLM replica and its vLLM engine
lose the CPU to Ray's agents and to any client on the node under load
(loadtests/PERFORMANCE.md). The replica runs at `ingress.replica_niceness` (0)
and Ray's control plane is reniced to 10 (serving/deployments/node_tuning.py).
"""

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
