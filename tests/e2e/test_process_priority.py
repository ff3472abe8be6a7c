"""CPU priorities on a node serving the dev config (direct ingress).

Ray starts its workers at nice 15; left so, the LLM replica and its vLLM engine
lose the CPU to Ray's agents and to any client on the node under load
(loadtests/PERFORMANCE.md). The replica runs at `ingress.replica_niceness` (0)
and Ray's control plane is reniced to 10 (serving/deployments/node_tuning.py).
"""

import psutil
import pytest

pytestmark = pytest.mark.e2e


def cluster_processes(server) -> list[psutil.Process]:
    return psutil.Process(server.proc.pid).children(recursive=True)


def named(procs, text) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if text in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_engine_and_replica_run_at_normal_priority(dev_server):
    procs = cluster_processes(dev_server)
    replica = named(procs, "ServeReplica:llm:llm-tiny-llama")
    engines = dev_server.engine_processes()
    assert replica and engines, [p.cmdline()[:1] for p in procs]
    assert {p.nice() for p in replica + engines} == {0}


def test_ray_control_plane_yields_to_the_engine(dev_server):
    procs = cluster_processes(dev_server)
    control = named(procs, "gcs_server") + named(procs, "raylet") + named(procs, "ray::ServeController")
    assert len(control) >= 3
    assert all(p.nice() >= 10 for p in control), {" ".join(p.cmdline())[:40]: p.nice() for p in control}
